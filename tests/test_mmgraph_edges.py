"""MM-GRAPH co-purchase edges touching a node with neither text nor image: kept for
reachability (hop distances are the co-purchase graph's) and logged, not dropped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from PIL import Image

from g4mm.data.mmgraph import _edge_index, read_mmgraph
from g4mm.data.records import ReadStats
from g4mm.graph import EdgeType, extract_subgraphs, hop_distances

TI = int(EdgeType.TEXT_IMAGE)


def write_mmgraph(root: Path, edges: list[list[int]]) -> Path:
    """Four products: A0 and A2 text only, A1 nothing (no text line, no image), A3 image only."""
    root.mkdir(parents=True)
    asins = ["A0", "A1", "A2", "A3"]
    torch.save(torch.tensor(edges), root / "nc_edges-nodeid.pt")
    torch.save(torch.tensor([0, 1, 0, 1]), root / "labels-w-missing.pt")
    split = {"train_idx": torch.tensor([0]), "val_idx": torch.tensor([2]), "test_idx": [3]}
    torch.save(split, root / "split.pt")
    torch.save({a: i for i, a in enumerate(asins)}, root / "node_mapping.pt")
    lines = [json.dumps({"asin": a, "raw_text": f"product {a}"}) for a in ("A0", "A2")]
    (root / "shop-raw-text.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "images").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "images" / "A3.jpg", "JPEG")
    return root


def test_edge_index_keeps_pairs_through_a_contentless_node_for_reachability():
    # the reviewer's case: A (text) - X (nothing) - B (text)
    has_text, has_image = torch.tensor([True, False, True]), torch.zeros(3, dtype=torch.bool)
    ei, et = _edge_index(torch.tensor([[0, 1], [1, 2]]), has_text, has_image)
    assert ei.tolist() == [[0, 1, 1, 2], [1, 0, 2, 1]]
    assert et.tolist() == [TI] * 4


def test_read_mmgraph_logs_and_keeps_hops_through_contentless_node(tmp_path, caplog):
    # A0 - A1 - A2 (A1 has no content) and A2 - A3 (text to image: not counted)
    root = write_mmgraph(tmp_path / "shop", [[0, 1], [1, 2], [2, 3]])
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="g4mm.data.mmgraph"):
        graph = read_mmgraph(root, stats, image_workers=1).graph
    assert "edge_without_content" not in stats.skipped  # kept, not dropped
    assert "2 of 3 edges touch one of the 1 nodes with neither text nor image" in caplog.text
    assert "nc_edges-nodeid.pt" in caplog.text
    pairs = sorted(zip(*graph.edge_index.tolist(), graph.edge_type.tolist(), strict=True))
    assert pairs == [(0, 1, TI), (1, 0, TI), (1, 2, TI), (2, 1, TI), (2, 3, TI), (3, 2, TI)]
    nodes, hops = hop_distances(graph, 0, tau=3)
    assert list(zip(nodes.tolist(), hops.tolist(), strict=True)) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    subs = extract_subgraphs(graph, 0, tau=2, max_text_nodes=4, max_image_nodes=4)
    assert subs.text.node_index.tolist() == [0, 2] and subs.text.hops.tolist() == [0, 2]
    assert subs.text.num_edges == 0 and subs.image.num_nodes == 0  # A1 joins no subgraph


def test_read_mmgraph_without_contentless_edges_logs_nothing(tmp_path, caplog):
    root = write_mmgraph(tmp_path / "shop", [[0, 2], [2, 3]])
    with caplog.at_level(logging.WARNING, logger="g4mm.data.mmgraph"):
        read_mmgraph(root, ReadStats(), image_workers=1)
    assert "neither text nor image" not in caplog.text
