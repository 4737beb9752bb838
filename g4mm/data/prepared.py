"""Read a finished preprocess directory without Ray (driver-side evaluation, GPU boxes).

Layout (written by :mod:`g4mm.pipeline.preprocess`): ``<dir>/samples/<split>/*.parquet``
(SAMPLE_SCHEMA rows), ``<dir>/features/{text,image}/*.parquet`` (FEATURE_SCHEMA), ``DONE``,
and for classification sources ``classes.json`` (:func:`read_classes`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DONE = "DONE"
#: What a classification source says of its classes (:func:`read_classes`).
CLASSES = "classes.json"


def check_prepared(prep_dir: str | os.PathLike[str]) -> Path:
    """``prep_dir`` as a Path, or FileNotFoundError when it is not a finished preprocess dir."""
    path = Path(prep_dir)
    if not (path / DONE).is_file():
        raise FileNotFoundError(
            f"{path} is not a finished preprocess directory (no {DONE} marker); run "
            "jobs/preprocess.py and pass the printed output directory"
        )
    return path


def available_splits(prep_dir: str | os.PathLike[str]) -> list[str]:
    """The splits that have sample shards in ``prep_dir``."""
    root = check_prepared(prep_dir) / "samples"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def split_path(prep_dir: str | os.PathLike[str], split: str) -> Path:
    path = check_prepared(prep_dir) / "samples" / split
    if not path.is_dir():
        raise FileNotFoundError(
            f"no {split!r} samples in {prep_dir} (available: {available_splits(prep_dir)})"
        )
    return path


def read_rows(prep_dir: str | os.PathLike[str], split: str) -> list[dict]:
    """All sample rows of ``split``, sorted by ``sample_id`` (deterministic across runs)."""
    rows = pq.read_table(str(split_path(prep_dir, split))).to_pylist()
    return sorted(rows, key=lambda r: r["sample_id"])


def _feature_dim(path: Path, keys: list[str], feats: pa.ListArray) -> int:
    """The common length of the feature vectors ``feats`` (aligned with ``keys``).

    Raises:
        ValueError: a feature is null, or its length differs from the first one's, naming
            ``path``, the key and the row.
    """
    nulls = np.flatnonzero(pc.is_null(feats).to_numpy(zero_copy_only=False))
    if nulls.size:
        row = int(nulls[0])
        raise ValueError(f"{path}: feature {keys[row]!r} (row {row}) is null")
    lengths = pc.list_value_length(feats).to_numpy(zero_copy_only=False)
    dim = int(lengths[0])
    ragged = np.flatnonzero(lengths != dim)
    if ragged.size:
        row = int(ragged[0])
        raise ValueError(
            f"{path}: feature {keys[row]!r} (row {row}) has {int(lengths[row])} values, "
            f"but feature {keys[0]!r} (row 0) has {dim}: all features of a table must have "
            "the same dimension"
        )
    return dim


def _read_feature_table(path: Path) -> dict[str, np.ndarray]:
    """``key -> float32 vector`` of the FEATURE_SCHEMA shards in ``path`` (``{}`` when none).

    Raises:
        ValueError: a null, wrong-length or non-finite feature, naming ``path`` and the key.
    """
    if not path.is_dir() or not any(path.glob("*.parquet")):
        return {}
    table = pq.read_table(str(path))
    keys = table.column("key").to_pylist()
    if not keys:
        return {}
    feats = table.column("feature").combine_chunks()
    dim = _feature_dim(path, keys, feats)
    values = feats.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    matrix = values.reshape(len(keys), dim)
    if not np.isfinite(matrix).all():
        bad = keys[int(np.argwhere(~np.isfinite(matrix))[0][0])]
        raise ValueError(f"{path}: feature {bad!r} has NaN/inf values")
    return {k: matrix[i] for i, k in enumerate(keys)}


def read_features(
    prep_dir: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(text_features, image_features)``: ``feature_key -> float32 vector``."""
    root = check_prepared(prep_dir) / "features"
    return _read_feature_table(root / "text"), _read_feature_table(root / "image")


def read_classes(prep_dir: str | os.PathLike[str]) -> dict | None:
    """``{"class_names", "zero_shot_classes", "input"}`` as the source's ``class_names.json``
    and ``zero_shot_classes.json`` gave them (None values: the source had no such file), or
    None for a source without classes (WikiWeb2M) or a directory from before this file."""
    path = check_prepared(prep_dir) / CLASSES
    return json.loads(path.read_text()) if path.is_file() else None


def class_names_from_rows(rows: list[dict]) -> list[str] | None:
    """Class id -> name, read off classification rows (their target text is the class name).

    None when no row carries a label. Ids without any row are named ``"class <id>"``.
    """
    names: dict[int, str] = {}
    for row in rows:
        if row.get("label") is not None and row["label"] >= 0:
            names.setdefault(int(row["label"]), str(row.get("target_text") or ""))
    if not names:
        return None
    return [names.get(i) or f"class {i}" for i in range(max(names) + 1)]
