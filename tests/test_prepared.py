"""Reading feature tables of a prepared directory: ragged and null features are named errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from g4mm.data.prepared import DONE, read_features
from g4mm.data.schema import FEATURE_SCHEMA


def _prepared(tmp_path: Path, shards: list[dict]) -> Path:
    """A finished preprocess dir whose text features are ``shards`` (one parquet file each)."""
    root = tmp_path / "prep"
    text = root / "features" / "text"
    text.mkdir(parents=True)
    for i, shard in enumerate(shards):
        pq.write_table(pa.table(shard, schema=FEATURE_SCHEMA), text / f"{i}.parquet")
    (root / DONE).write_text("")
    return root


def test_equal_length_features_load(tmp_path):
    root = _prepared(tmp_path, [{"key": ["a", "b"], "feature": [[1, 2], [3, 4]]}])
    text, image = read_features(root)
    assert image == {}
    assert set(text) == {"a", "b"}
    np.testing.assert_array_equal(text["b"], np.array([3, 4], np.float32))


def test_ragged_features_name_path_and_key(tmp_path):
    # 2 + 1 + 3 = 6 values used to reshape silently into three wrong 2-vectors
    root = _prepared(tmp_path, [{"key": ["a", "b", "c"], "feature": [[1, 2], [3], [4, 5, 6]]}])
    with pytest.raises(ValueError, match=r"features/text: feature 'b' \(row 1\) has 1 values"):
        read_features(root)


def test_ragged_features_across_shards(tmp_path):
    # dims 2, 4 and 3: 9 values used to reshape silently into three 3-vectors
    shards = [{"key": ["a", "b"], "feature": [[1, 2], [3, 4, 5, 6]]}]
    shards.append({"key": ["c"], "feature": [[7, 8, 9]]})
    root = _prepared(tmp_path, shards)
    with pytest.raises(
        ValueError, match=r"feature 'b' \(row 1\) has 4 values.*'a' \(row 0\) has 2"
    ):
        read_features(root)


def test_null_feature_names_path_and_key(tmp_path):
    root = _prepared(tmp_path, [{"key": ["a", "b"], "feature": [[1, 2], None]}])
    with pytest.raises(ValueError, match=r"features/text: feature 'b' \(row 1\) is null"):
        read_features(root)
