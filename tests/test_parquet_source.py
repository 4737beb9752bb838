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
