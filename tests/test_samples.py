"""Sample rows (SAMPLE_SCHEMA), records (TargetSpec / SourceGraph / ReadStats) and feature keys."""

from __future__ import annotations

import functools

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from g4mm.config import DataConfig
from g4mm.data.records import ReadStats, SourceGraph, TargetSpec, normalise_split
from g4mm.data.samples import build_samples
from g4mm.data.schema import FEATURE_SCHEMA, SAMPLE_SCHEMA, feature_key
from g4mm.graph import MultimodalGraph

#   e --TT-- c --TT-- a --TT-- t --II-- b --TI-- d        (b: image only; t: text and image)
IDS = ["t", "a", "b", "c", "d", "e"]
TEXTS = ["target text", "alpha", None, "gamma", "delta", "far"]
IMAGES = ["/img/t.jpg", None, "/img/b.jpg", None, None, None]
EDGES = [
    ("t", "a", "text-text"),
    ("t", "b", "image-image"),
    ("a", "c", "text-text"),
    ("b", "d", "text-image"),
    ("c", "e", "text-text"),
]


def source(targets, zero_shot=None) -> SourceGraph:
    graph = MultimodalGraph.from_edge_list(IDS, TEXTS, IMAGES, EDGES, name="toy")
    return SourceGraph(graph=graph, targets=targets, source="toy.src", zero_shot_classes=zero_shot)


def edges(row: dict, kind: str) -> list[tuple[int, int]]:
    """Sorted local (src, dst) pairs of a sample row's ``kind`` ("text" / "image") edges."""
    return sorted(zip(row[f"{kind}_edge_src"], row[f"{kind}_edge_dst"], strict=True))


def named(row: dict, kind: str) -> tuple[list, set]:
    """Order-free view of a modality: sorted (node, hop) pairs and the edges between names."""
    names = row["text_nodes"] if kind == "text" else row["image_paths"]
    hops = row[f"{kind}_hops"]
    pairs = sorted(zip(names, hops, strict=True))
    return pairs, {(names[s], names[d]) for s, d in edges(row, kind)}


CFG = DataConfig(tau=2, max_text_nodes=12, max_image_nodes=5)


def test_rows_hop_order_target_first_and_local_edges():
    rows = build_samples(
        source([TargetSpec(0, "train", "P", "T"), TargetSpec(1, "val", "Q", None)]), CFG
    )
    t, a = rows
    assert t["sample_id"] == "toy.src#t"
    # hop 0: t (first: the target's own node); hop 1: a; hop 2: c and d.
    assert t["text_nodes"][0] == "target text" and t["text_hops"][0] == 0
    text, text_edges = named(t, "text")
    assert text == [("alpha", 1), ("delta", 2), ("gamma", 2), ("target text", 0)]
    assert text_edges == {("target text", "alpha"), ("alpha", "target text"),
                          ("alpha", "gamma"), ("gamma", "alpha")}  # fmt: skip
    image, image_edges = named(t, "image")
    assert image == [("/img/b.jpg", 1), ("/img/t.jpg", 0)] and t["image_paths"][0] == "/img/t.jpg"
    assert image_edges == {("/img/t.jpg", "/img/b.jpg"), ("/img/b.jpg", "/img/t.jpg")}
    # From a: t and c at hop 1, e at hop 2 (d is 3 hops away); b's image at hop 2.
    assert a["text_nodes"][0] == "alpha"
    assert named(a, "text")[0] == [("alpha", 0), ("far", 2), ("gamma", 1), ("target text", 1)]
    assert named(a, "image")[0] == [("/img/b.jpg", 2), ("/img/t.jpg", 1)]
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    assert table.schema == SAMPLE_SCHEMA


def test_image_only_target_and_caps():
    rows = build_samples(
        source([TargetSpec(2, "test", "P", "T")]),
        DataConfig(tau=2, max_text_nodes=2, max_image_nodes=1),
    )
    (row,) = rows
    assert row["image_paths"] == ["/img/b.jpg"] and row["image_hops"] == [0]
    assert row["image_edge_src"] == [] and row["image_edge_dst"] == []
    assert named(row, "text")[0] == [("delta", 1), ("target text", 1)]


def test_no_images_when_max_image_nodes_is_zero():
    (row,) = build_samples(
        source([TargetSpec(0, "train", "P", "T")]),
        DataConfig(tau=2, max_text_nodes=12, max_image_nodes=0),
    )
    assert row["image_paths"] == [] and row["image_hops"] == []
    assert row["text_nodes"][0] == "target text"


def test_node_order_is_seeded_and_carries_no_hop():
    """Same sample id + seed -> same order; over many targets the hop-1 nodes are not always
    placed first (a structure-blind baseline must not be able to read hops off positions)."""
    ids = [f"n{i}" for i in range(40)]
    texts = [f"text {i}" for i in range(40)]
    images = [f"/img/{i}.jpg" for i in range(40)]
    ring = [(ids[i], ids[(i + 1) % 40], "image-image") for i in range(40)]
    ring += [(ids[i], ids[(i + 1) % 40], "text-text") for i in range(40)]
    graph = MultimodalGraph.from_edge_list(ids, texts, images, ring, name="ring")
    src = SourceGraph(graph=graph, targets=[TargetSpec(i, "train", "P", "T") for i in range(40)],
                      source="ring")  # fmt: skip
    rows = build_samples(src, CFG)
    assert rows == build_samples(src, CFG)  # deterministic
    other_seed = build_samples(src, DataConfig(tau=2, max_text_nodes=12, max_image_nodes=5, seed=1))
    assert [r["text_nodes"] for r in rows] != [r["text_nodes"] for r in other_seed]
    assert all(r["text_hops"][0] == 0 for r in rows)  # the target's own text stays first
    second_hops = {r["text_hops"][1] for r in rows}
    first_image_hops = {r["image_hops"][0] for r in rows}
    assert second_hops == {1, 2} and first_image_hops == {0, 1, 2}


def test_node_text_override_only_in_the_targets_own_sample():
    targets = [
        TargetSpec(0, "train", "P", "secret", node_text="redacted"),
        TargetSpec(1, "val", "Q", "x"),
    ]
    own, other = build_samples(source(targets), CFG)
    assert own["text_nodes"][0] == "redacted"
    assert "target text" not in own["text_nodes"]
    assert "target text" in other["text_nodes"][1:]


def test_empty_text_skipped_and_counted():
    stats = ReadStats()
    targets = [TargetSpec(2, "train", "  ", "T"), TargetSpec(2, "val", "prompt", "T")]
    rows = build_samples(source(targets), DataConfig(tau=0), stats)
    assert [r["split"] for r in rows] == ["val"]
    assert rows[0]["text_nodes"] == []
    assert stats.skipped == {"empty_text": 1}


def test_zero_shot_flag_and_train_holdout():
    stats = ReadStats()
    targets = [
        TargetSpec(0, "train", "P", "cls1", label=1),
        TargetSpec(1, "test", "P", "cls1", label=1),
        TargetSpec(3, "test", "P", "cls0", label=0),
        TargetSpec(4, "val", "P", "gen"),
    ]
    rows = build_samples(source(targets, zero_shot=[1]), CFG, stats)
    assert [(r["sample_id"], r["zero_shot"], r["label"]) for r in rows] == [
        ("toy.src#a", True, 1),
        ("toy.src#c", False, 0),
        ("toy.src#d", False, None),
    ]
    assert stats.skipped == {"zero_shot_heldout_train": 1}


def test_rows_validate_against_schema_and_round_trip(tmp_path):
    rows = build_samples(source([TargetSpec(i, "train", "P", None) for i in range(6)]), CFG)
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    pq.write_table(table, tmp_path / "s.parquet")
    back = pq.read_table(tmp_path / "s.parquet")
    assert back.schema.equals(SAMPLE_SCHEMA) and back.to_pylist() == rows
    bad = dict(rows[0], text_hops=["zero"])
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        pa.Table.from_pylist([bad], schema=SAMPLE_SCHEMA)


def test_feature_key_and_schema():
    assert feature_key("text", "abc") == "text:a9993e364706816aba3e25717850c26c9cd0d89d"
    assert feature_key("image", "abc").startswith("image:a9993e36")
    with pytest.raises(ValueError):
        feature_key("audio", "abc")  # type: ignore[arg-type]
    pa.Table.from_pylist([{"key": "text:x", "feature": [0.5, 1.0]}], schema=FEATURE_SCHEMA)
    assert FEATURE_SCHEMA.field("feature").type == pa.list_(pa.float32())


def test_read_stats_merge_and_dict():
    a = ReadStats(images_ok=2, images_missing=1, skipped={"x": 1})
    b = ReadStats(images_corrupt=3, skipped={"x": 2, "y": 1})
    b.count_image("ok")
    total = functools.reduce(ReadStats.merge, [a, b], ReadStats())
    assert total.to_dict() == {
        "images": {"ok": 3, "missing": 1, "corrupt": 3},
        "skipped": {"x": 3, "y": 1},
    }
    assert ReadStats.from_dict(total.to_dict()) == total
    assert ReadStats().merge(total.to_dict()) == total
    assert a.images_ok == 2  # the parts are not modified
    with pytest.raises(ValueError):
        a.count_image("fine")


def test_record_validation():
    assert [normalise_split(s) for s in ("train", b"val", " Validation ", "TEST", "dev", None)] == [
        "train",
        "val",
        "val",
        "test",
        None,
        None,
    ]
    with pytest.raises(ValueError, match="split"):
        TargetSpec(0, "validation", "P", "T")
    with pytest.raises(ValueError, match=r"toy\.src: target 0 refers to node 6"):
        source([TargetSpec(6, "train", "P", "T")])


def test_rows_carry_what_the_raw_layout_reads():
    """Segments (the target's own replaced), reading order nearest hop first then index for a
    source without document order (by index with one), image captions and owners."""
    graph = MultimodalGraph.from_edge_list(IDS, TEXTS, IMAGES, EDGES, name="toy")
    captions = [None, None, "a photo of b", None, None, None]
    segments = ["target text (LM)", "alpha (LM)", None, "gamma (LM)", "delta (LM)", "far (LM)"]
    spec = TargetSpec(0, "train", "P", "T", lead="summarize: ", cue=", summary:",
                      segment="own text, target removed")  # fmt: skip
    for document_order in (False, True):
        src = SourceGraph(graph=graph, targets=[spec], source="toy.src", segments=segments,
                          captions=captions, document_order=document_order)  # fmt: skip
        (row,) = build_samples(src, CFG)
        assert (row["lead"], row["cue"]) == ("summarize: ", ", summary:")
        by_text = dict(zip(row["text_nodes"], row["text_segments"], strict=True))
        assert by_text == {"target text": "own text, target removed", "alpha": "alpha (LM)",
                           "gamma": "gamma (LM)", "delta": "delta (LM)"}  # fmt: skip
        order = {t: k for t, k in zip(row["text_nodes"], row["text_order"], strict=True)}
        if document_order:  # the node index: t 0, a 1, c 3, d 4
            assert order == {"target text": 0, "alpha": 1, "gamma": 3, "delta": 4}
        else:  # (hop, index): t, a, then c (hop 2, index 3) before d (hop 2, index 4)
            assert order == {"target text": 0, "alpha": 1, "gamma": 2, "delta": 3}
        images = dict(zip(row["image_paths"], row["image_captions"], strict=True))
        assert images == {"/img/t.jpg": "", "/img/b.jpg": "a photo of b"}
        owners = {p: row["text_nodes"][o] if o >= 0 else None
                  for p, o in zip(row["image_paths"], row["image_owner"], strict=True)}  # fmt: skip
        # t carries its own image; b is an image node whose TEXT_IMAGE neighbour is d
        assert owners == {"/img/t.jpg": "target text", "/img/b.jpg": "delta"}
