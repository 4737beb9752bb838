"""Parquet layout reader: integer node ids and blank targets, on real files in tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from g4mm.config import DataConfig
from g4mm.data.parquet_source import read_parquet_graph
from g4mm.data.records import ReadStats
from g4mm.data.samples import build_samples


def _write(root: Path, nodes: dict, edges: dict) -> Path:
    root.mkdir()
    pq.write_table(pa.table(nodes), root / "nodes.parquet")
    pq.write_table(pa.table(edges), root / "edges.parquet")
    return root


def test_integer_node_ids_match_their_edges(tmp_path):
    nodes = {"id": [10, 20, 30], "text": ["x", "y", "z"], "split": ["train", "test", None]}
    nodes["label"] = [0, 1, None]
    edges = {"src": [10, 20], "dst": [20, 30], "type": ["text-text", "text-text"]}
    root = _write(tmp_path / "ints", nodes, edges)
    assert pq.read_schema(root / "nodes.parquet").field("id").type == pa.int64()
    src = read_parquet_graph(root, ReadStats())
    assert src.graph.node_ids == ["10", "20", "30"]
    assert src.graph.num_edges == 4  # 2 undirected edges, both directions
    rows = build_samples(src, DataConfig(tau=1))
    assert [r["sample_id"] for r in rows] == ["ints#10", "ints#20"]


def test_integer_edge_to_unknown_node_names_row_and_id(tmp_path):
    nodes = {"id": [1, 2], "text": ["x", "y"], "split": ["train", "train"]}
    edges = {"src": [1, 2], "dst": [2, 3], "type": ["text-text", "text-text"]}
    root = _write(tmp_path / "ints", nodes, edges)
    with pytest.raises(ValueError, match=r"edges\.parquet: row 1: unknown node id '3'"):
        read_parquet_graph(root, ReadStats())


def test_blank_target_text_is_a_counted_logged_skip(tmp_path, caplog):
    nodes = {
        "id": ["a", "b", "c", "d"],
        "text": ["w", "x", "y", "z"],
        "split": ["train", "train", "val", "test"],
        "label": [None, 0, None, None],
        "target_text": ["", "  \t", "a summary", None],
    }
    edges = {"src": ["a"], "dst": ["b"], "type": ["text-text"]}
    root = _write(tmp_path / "blank", nodes, edges)
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="g4mm.data.parquet_source"):
        src = read_parquet_graph(root, stats)
    assert [(t.node, t.target_text) for t in src.targets] == [(2, "a summary")]
    assert stats.skipped == {"empty_target": 2, "no_target": 1}
    assert "nodes.parquet: row 0: blank target_text" in caplog.text
    assert "nodes.parquet: row 1: blank target_text" in caplog.text


@pytest.mark.parametrize(
    ("column", "values", "found"),
    [
        ("label", ["0", "1", "x"], "string"),  # ended in "'<' not supported between str and int"
        ("label", [0.0, float("nan"), 1.5], "double"),  # NaN, and 1.5 silently became class 1
        ("split", [1, 2, None], "int64"),  # ended in "'int' object has no attribute 'strip'"
        ("text", [1.0, float("nan"), 2.0], "double"),  # became the texts "1.0" and "nan"
        ("image_path", [1, 2, 3], "int64"),  # ended in a TypeError inside the cache key
    ],
)
def test_a_column_of_the_wrong_type_is_named_with_both_types(tmp_path, column, values, found):
    nodes = {"id": ["a", "b", "c"], "text": ["x", "y", "z"], "split": ["train", "val", None],
             column: values}  # fmt: skip
    edges = {"src": ["a"], "dst": ["b"], "type": ["text-text"]}
    root = _write(tmp_path / "typed", nodes, edges)
    expected = rf"nodes\.parquet: column '{column}' is {found}, expected"
    with pytest.raises(ValueError, match=expected):
        read_parquet_graph(root, ReadStats())


def test_duplicate_node_ids_name_the_file_and_row(tmp_path):
    nodes = {"id": ["a", "b", "a"], "text": ["x", "y", "z"], "split": ["train", "val", None]}
    root = _write(tmp_path / "dup", nodes, {"src": ["a"], "dst": ["b"], "type": ["text-text"]})
    with pytest.raises(ValueError, match=r"nodes\.parquet: row 2: duplicate 'a' node id"):
        read_parquet_graph(root, ReadStats())


def test_unicode_rtl_and_emoji_text_survives_to_the_samples(tmp_path):
    texts = ["שלום עולם, مرحبا", "naïve café 👋🏽 \u200f", "零样本 zero-shot"]
    nodes = {"id": ["a", "b", "c"], "text": texts, "split": ["train", "val", None],
             "target_text": ["résumé ✓", "ملخص", None]}  # fmt: skip
    edges = {"src": ["a", "b"], "dst": ["b", "c"], "type": ["text-text", "text-text"]}
    src = read_parquet_graph(_write(tmp_path / "uni", nodes, edges), ReadStats())
    assert src.graph.texts == texts
    assert [t.target_text for t in src.targets] == ["résumé ✓", "ملخص"]


def test_images_outside_the_input_are_counted_corrupt_and_never_opened(tmp_path, caplog):
    """``../``, an absolute path and a symlink out of the input directory: each a counted
    corrupt image, never opened (nothing of the file reaches a log); the image inside is read;
    ``data.allow_outside_images`` reads the outside picture too."""
    from PIL import Image

    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8), (0, 200, 0)).save(outside / "secret.png")
    secret_text = tmp_path / "secret.txt"
    secret_text.write_text("root:x:0:0:TOP-SECRET-BYTES\n")
    root = _write(tmp_path / "data", {
        "id": ["a", "b", "c", "d", "e"], "text": ["t"] * 5, "split": ["train"] * 5,
        "image_path": ["in.png", "../outside/secret.png", str(secret_text), "link.png", None],
    }, {"src": ["a"], "dst": ["b"], "type": ["text-text"]})  # fmt: skip
    Image.new("RGB", (8, 8)).save(root / "in.png")
    (root / "link.png").symlink_to(outside / "secret.png")
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="g4mm.data.images"):
        src = read_parquet_graph(root, stats, image_workers=1)
    assert (stats.images_ok, stats.images_missing, stats.images_corrupt) == (1, 0, 3)
    assert [i is not None for i in src.graph.images] == [True, False, False, False, False]
    assert caplog.text.count("resolves outside") == 3 and "TOP-SECRET" not in caplog.text
    allowed = ReadStats()
    read_parquet_graph(root, allowed, image_workers=1, allow_outside_images=True)
    assert (allowed.images_ok, allowed.images_corrupt) == (3, 1)  # the text file: corrupt


def test_dictionary_encoded_text_columns_are_text(tmp_path):
    """pandas categoricals arrive as Arrow dictionaries of strings: accepted as strings."""
    split = pa.array(["train", "val", None]).dictionary_encode()
    nodes = {"id": ["a", "b", "c"], "text": ["x", "y", "z"], "split": split,
             "target_text": ["one", "two", None]}  # fmt: skip
    root = _write(tmp_path / "dict", nodes, {"src": ["a"], "dst": ["b"], "type": ["text-text"]})
    src = read_parquet_graph(root, ReadStats())
    assert [t.split for t in src.targets] == ["train", "val"]
