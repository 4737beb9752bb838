"""Source readers on real files written here: gzipped TFRecords of SequenceExamples (official
WikiWeb2M field names), MM-GRAPH ``.pt`` directories, parquet graphs, JPEG/PNG images including
a truncated JPEG and missing files."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageFile
from tfrecord import example_pb2

from g4mm.config import DataConfig
from g4mm.data.images import check_image, load_image, load_manifest, resolve_image
from g4mm.data.mmgraph import read_mmgraph
from g4mm.data.parquet_source import read_parquet_graph
from g4mm.data.records import ReadStats
from g4mm.data.samples import build_samples
from g4mm.data.schema import SAMPLE_SCHEMA
from g4mm.data.tfrecord import sequence_example, write_tfrecords
from g4mm.data.wikiweb2m import iter_wikiweb2m
from g4mm.graph import EdgeType

URL = "https://upload.example.org/wiki/commons/{}"


def edges(row: dict, kind: str) -> list[tuple[int, int]]:
    """Sorted local (src, dst) pairs of a sample row's ``kind`` ("text" / "image") edges."""
    return sorted(zip(row[f"{kind}_edge_src"], row[f"{kind}_edge_dst"], strict=True))


# ------------------------------------------------------------------------------------ images


def write_image(path: Path, fmt: str = "JPEG", size: int = 48, seed: int = 0) -> Path:
    """A noisy RGB image (noise so that a JPEG is big enough to truncate meaningfully)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8)
    Image.fromarray(pixels.numpy(), "RGB").save(path, fmt)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    write_image(path, "JPEG", seed=7)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_pil_truncated_loading_is_not_enabled_globally():
    # A fresh interpreter importing every reader: none may flip the flag.
    code = (
        "import g4mm.data.images, g4mm.data.mmgraph, g4mm.data.parquet_source, "
        "g4mm.data.samples, g4mm.data.wikiweb2m; from PIL import ImageFile; "
        "print(ImageFile.LOAD_TRUNCATED_IMAGES)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_check_image_ok_missing_corrupt(tmp_path):
    assert check_image(write_image(tmp_path / "a.jpg")) == "ok"
    assert check_image(write_image(tmp_path / "b.png", "PNG")) == "ok"
    assert check_image(tmp_path / "absent.jpg") == "missing"
    assert check_image(tmp_path) == "missing"  # a directory is no image file
    assert check_image(write_truncated_jpeg(tmp_path / "t.jpg")) == "corrupt"
    (tmp_path / "text.jpg").write_bytes(b"this is not an image at all")
    assert check_image(tmp_path / "text.jpg") == "corrupt"


def test_zero_byte_and_text_files_named_png_are_corrupt(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("<html>not a picture</html>")
    assert check_image(tmp_path / "zero.png") == check_image(tmp_path / "text.png") == "corrupt"


def test_a_decompression_bomb_is_corrupt_and_never_decoded(tmp_path):
    """A 10,000 x 10,000 PNG (~100 KB on disk, 100 MB as pixels; PIL only warns) is refused
    from its header; a photo under the limit is decoded at a reduced scale for the encoder."""
    import warnings

    bomb = tmp_path / "bomb.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Image.new("L", (10_000, 10_000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 1_000_000
    assert check_image(bomb) == "corrupt"
    with pytest.raises(OSError, match=r"10000 x 10000 pixels, over the limit"):
        load_image(bomb)
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (3000, 2000), (200, 10, 10)).save(photo)
    assert load_image(photo, max_side=1024).size == (1024, 683)


def test_truncated_jpeg_still_opens_lazily(tmp_path):
    """The truncation is only visible on load(): a check with open() alone would pass it."""
    path = write_truncated_jpeg(tmp_path / "t.jpg")
    with Image.open(path) as image:
        assert image.size == (48, 48)
        with pytest.raises(OSError):
            image.load()


def test_load_image_rgb_and_resized(tmp_path):
    gray = tmp_path / "g.png"
    Image.new("L", (10, 20), 128).save(gray)
    image = load_image(gray, 16)
    assert image.mode == "RGB" and image.size == (16, 16)
    assert load_image(gray).size == (10, 20)
    with pytest.raises(OSError):
        load_image(write_truncated_jpeg(tmp_path / "t.jpg"), 8)


def test_manifest_and_resolution(tmp_path):
    (tmp_path / "manifest.csv").write_text(
        "url,path\nhttps://cdn.example.org/x/photo,sub/photo.jpg\n", encoding="utf-8"
    )
    manifest = load_manifest(tmp_path)
    assert manifest == {"https://cdn.example.org/x/photo": (tmp_path / "sub/photo.jpg").resolve()}
    assert (
        resolve_image("https://cdn.example.org/x/photo", tmp_path, manifest)
        == (tmp_path / "sub/photo.jpg").resolve()
    )
    # Not in the manifest: the URL's (percent-decoded) file name inside images_dir.
    assert (
        resolve_image(URL.format("a/ab/Old%20map.jpg"), tmp_path, manifest)
        == (tmp_path / "Old map.jpg").resolve()
    )
    assert resolve_image("rel/x.png", tmp_path, {}) == (tmp_path / "rel/x.png").resolve()
    assert resolve_image(str(tmp_path / "abs.png"), "/elsewhere", {}) == tmp_path / "abs.png"
    assert load_manifest(tmp_path / "no-such-dir") == {}
    with pytest.raises(ValueError, match="needs an images directory"):
        resolve_image(URL.format("x.jpg"), None, {})


def test_manifest_is_parsed_once_per_file_version(tmp_path):
    file = tmp_path / "manifest.csv"
    file.write_text("url,path\nhttps://a/x,x.jpg\n", encoding="utf-8")
    first = load_manifest(tmp_path)
    first["https://a/other"] = tmp_path / "mutated.jpg"  # callers get their own copy
    assert load_manifest(tmp_path) == {"https://a/x": (tmp_path / "x.jpg").resolve()}
    file.write_text("url,path\nhttps://a/x,x.jpg\nhttps://a/y,sub/y.jpg\n", encoding="utf-8")
    assert load_manifest(tmp_path)["https://a/y"] == (tmp_path / "sub/y.jpg").resolve()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("uri,file\na,b.jpg\n", 1),
        ("url,path\nhttps://a/x,x.jpg\nhttps://a/y\n", 3),
        ("url,path\nhttps://a/x,x.jpg,extra\n", 2),
        ("url,path\nhttps://a/x,\n", 2),
        ("url,path\nhttps://a/x,x.jpg\nhttps://a/x,y.jpg\n", 3),
    ],
)
def test_bad_manifest_names_file_and_line(tmp_path, text, line):
    (tmp_path / "manifest.csv").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"manifest\.csv:{line}:"):
        load_manifest(tmp_path)


# ------------------------------------------------------------------------------------ WikiWeb2M


def page_record(split: bytes, title: str, sections: list[dict]) -> bytes:
    """A WikiWeb2M-shaped SequenceExample built with the protobuf classes directly."""
    ex = example_pb2.SequenceExample()
    ctx = ex.context.feature
    ctx["split"].bytes_list.value.append(split)
    ctx["page_url"].bytes_list.value.append(f"https://en.wikipedia.org/wiki/{title}".encode())
    ctx["page_title"].bytes_list.value.append(title.encode())
    ctx["clean_page_description"].bytes_list.value.append(f"{title} is a small town.".encode())
    fl = ex.feature_lists.feature_list

    def add_bytes(name, values):
        fl[name].feature.add().bytes_list.value.extend(v.encode() for v in values)

    def add_int(name, value):
        fl[name].feature.add().int64_list.value.append(value)

    for s in sections:
        add_bytes("section_title", [s["title"]])
        add_int("section_depth", 1 if s["parent"] == -1 else 2)
        add_int("section_heading_level", 2 if s["parent"] == -1 else 3)
        add_int("section_parent_index", s["parent"])
        add_bytes("section_clean_1st_sentence", [s["first"]])
        add_bytes("section_rest_sentence", [s["rest"]])
        add_bytes("section_image_url", s.get("urls", []))
        add_bytes("section_image_captions", s.get("captions", []))
        add_int("is_section_summarization_sample", s.get("summ", 1))
    return ex.SerializeToString()


PAGE_A = [
    {  # 0: one good JPEG, one truncated JPEG
        "title": "History",
        "parent": -1,
        "first": "The town was founded in 1850.",
        "rest": "It grew quickly after the railway arrived.",
        "urls": [URL.format("a/a1/Old%20map.jpg"), URL.format("b/b2/Broken.jpg")],
        "captions": ["Old map", "Broken photo"],
    },
    {  # 1: one good PNG, one missing file
        "title": "Economy",
        "parent": 0,
        "first": "Farming dominates the economy.",
        "rest": "Wheat and corn are grown.",
        "urls": [URL.format("c/c3/Field.png"), URL.format("d/d4/Gone.jpg")],
        "captions": ["Field", ""],
    },
    {"title": "Notes", "parent": 0, "first": "", "rest": ""},  # empty target
    {  # 3: not a summarization sample; image through the manifest
        "title": "Culture",
        "parent": -1,
        "first": "Music is popular.",
        "rest": "",
        "urls": ["https://cdn.example.org/culture/photo"],
        "captions": ["Band"],
        "summ": 0,
    },
]
PAGE_B = [{"title": "Climate", "parent": -1, "first": "Winters are cold.", "rest": "Snow."}]


@pytest.fixture
def wiki(tmp_path):
    """A gzipped TFRecord with 4 pages (train, validation, unknown split, test) + images."""
    images = tmp_path / "images"
    write_image(images / "Old map.jpg")
    write_truncated_jpeg(images / "Broken.jpg")
    write_image(images / "Field.png", "PNG", seed=1)
    write_image(images / "sub" / "culture.jpg", seed=2)
    (images / "manifest.csv").write_text(
        "url,path\nhttps://cdn.example.org/culture/photo,sub/culture.jpg\n", encoding="utf-8"
    )
    page_d = sequence_example(  # the framing module's own helper, same field names
        {"split": [b"test"], "page_title": ["Delta"], "clean_page_description": ["A river."]},
        {
            "section_title": [["Mouth"]],
            "section_parent_index": [[-1]],
            "section_clean_1st_sentence": [["The river meets the sea."]],
            "section_rest_sentence": [["It is wide."]],
            "section_image_url": [[]],
            "section_image_captions": [[]],
            "is_section_summarization_sample": [[1]],
        },
    )
    records = [
        page_record(b"train", "Alpha", PAGE_A),
        page_record(b"validation", "Beta", PAGE_B),
        page_record(b"holdout", "Gamma", PAGE_B),
        page_d,
    ]
    path = tmp_path / "pages.tfrecord.gz"
    assert write_tfrecords(path, records) == 4
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    return path, images


def read_all(path, images):
    stats = ReadStats()
    return list(iter_wikiweb2m(path, images, stats)), stats


def test_wikiweb2m_counts_and_splits(wiki, caplog):
    path, images = wiki
    with caplog.at_level(logging.WARNING, logger="g4mm.data.wikiweb2m"):
        graphs, stats = read_all(path, images)
    assert [g.source for g in graphs] == [
        "pages.tfrecord.gz:0",
        "pages.tfrecord.gz:1",
        "pages.tfrecord.gz:3",
    ]
    # Over all 5 image references of page A: 3 ok (jpg, png, via manifest), 1 missing, 1 corrupt.
    assert (stats.images_ok, stats.images_missing, stats.images_corrupt) == (3, 1, 1)
    assert stats.skipped == {"unknown_split": 1, "empty_target": 1}
    assert [[t.split for t in g.targets] for g in graphs] == [["train", "train"], ["val"], ["test"]]
    assert "pages.tfrecord.gz:2" in caplog.text and "holdout" in caplog.text


def test_wikiweb2m_graph_structure(wiki):
    path, images = wiki
    (page, *_), _ = read_all(path, images)
    g = page.graph
    assert g.node_ids == [
        "page",
        "section0",
        "section0/image0",
        "section1",
        "section1/image0",
        "section2",
        "section3",
        "section3/image0",
    ]  # the corrupt section0/image1 and the missing section1/image1 are left out
    assert g.texts[0] == "Alpha. Alpha is a small town."
    assert g.texts[1] == (
        "History. The town was founded in 1850. It grew quickly after the railway arrived. "
        "Captions: Old map; Broken photo"
    )
    assert g.texts[5] == "Notes"  # empty 1st sentence and rest: still a text node
    assert g.images[2] == str((images / "Old map.jpg").resolve())
    assert g.images[7] == str((images / "sub" / "culture.jpg").resolve())
    assert all(g.images[i] is None for i in (0, 1, 3, 5, 6))
    edges = {
        (g.node_ids[u], g.node_ids[v], EdgeType(t).name)
        for (u, v), t in zip(g.edge_index.t().tolist(), g.edge_type.tolist(), strict=True)
    }
    undirected = {
        ("section0", "page", "TEXT_TEXT"),
        ("section1", "section0", "TEXT_TEXT"),
        ("section2", "section0", "TEXT_TEXT"),
        ("section3", "page", "TEXT_TEXT"),
        ("section0", "section0/image0", "TEXT_IMAGE"),
        ("section1", "section1/image0", "TEXT_IMAGE"),
        ("section3", "section3/image0", "TEXT_IMAGE"),
        ("section1/image0", "section0/image0", "IMAGE_IMAGE"),  # image <-> parent's images
    }
    assert edges == undirected | {(v, u, t) for u, v, t in undirected}
    assert [(t.node, t.target_text) for t in page.targets] == [
        (1, "The town was founded in 1850."),
        (3, "Farming dominates the economy."),
    ]
    assert page.targets[1].prompt == "Page: Alpha. Section: Economy. Wheat and corn are grown."


def test_wikiweb2m_samples_keep_bad_images_and_prevent_leaks(wiki):
    path, images = wiki
    graphs, stats = read_all(path, images)
    cfg = DataConfig(tau=2, max_text_nodes=12, max_image_nodes=5)
    rows = [row for g in graphs for row in build_samples(g, cfg, stats)]
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    assert table.num_rows == 4
    by_id = {row["sample_id"]: row for row in rows}
    # Section 0 lost its truncated image and section 1 its missing one: both samples remain.
    history, economy = by_id["pages.tfrecord.gz:0#section0"], by_id["pages.tfrecord.gz:0#section1"]
    assert by_id["pages.tfrecord.gz:1#section0"]["split"] == "val"
    for row in rows:
        assert row["target_text"] not in row["text_nodes"][0]
        assert row["target_text"] not in row["prompt"]
    # The graph itself still holds the 1st sentence: the per-sample override removes it.
    assert "Farming dominates the economy." in graphs[0].graph.texts[3]
    assert economy["text_nodes"][0] == "Economy. Wheat and corn are grown. Captions: Field"
    # Target first; then section0 (1 hop), page and section2 (2 hops) in a seeded order.
    assert economy["text_hops"][0] == 0 and sorted(economy["text_hops"]) == [0, 1, 2, 2]
    assert graphs[0].graph.texts[1] in economy["text_nodes"]  # others keep their 1st sentence
    field, old_map = str((images / "Field.png").resolve()), str((images / "Old map.jpg").resolve())
    hop_of = dict(zip(economy["image_paths"], economy["image_hops"], strict=True))
    assert hop_of == {field: 1, old_map: 2}
    assert edges(economy, "image") == [(0, 1), (1, 0)]
    # Section 0: its own good image (1 hop) and its child's (2 hops); section 3's is 3 hops.
    hop_of = dict(zip(history["image_paths"], history["image_hops"], strict=True))
    assert hop_of == {old_map: 1, field: 2}


def test_wikiweb2m_without_images_dir_counts_every_image_missing(wiki):
    path, _ = wiki
    graphs, stats = read_all(path, None)
    assert (stats.images_ok, stats.images_missing, stats.images_corrupt) == (0, 5, 0)
    assert all(img is None for img in graphs[0].graph.images)
    assert len(graphs[0].targets) == 2


def test_wikiweb2m_undecodable_record_is_counted(tmp_path, caplog):
    path = tmp_path / "bad.tfrecord.gz"
    write_tfrecords(path, [b"\xff\xff\xff not a protobuf", page_record(b"train", "A", PAGE_B)])
    stats = ReadStats()
    with caplog.at_level(logging.WARNING):
        graphs = list(iter_wikiweb2m(path, tmp_path, stats))
    assert [g.source for g in graphs] == ["bad.tfrecord.gz:1"]
    assert stats.skipped == {"bad_record": 1}
    assert "bad.tfrecord.gz:0" in caplog.text


# ------------------------------------------------------------------------------------ MM-GRAPH


class NotAllowed:
    """A pickled class instance that ``torch.load(weights_only=True)`` must refuse."""


@pytest.fixture
def mm_dir(tmp_path):
    """6 products; A1's image truncated, A2's missing; A3 has no text; class 2 is zero-shot."""
    root = tmp_path / "ele-fashion"
    asins = [f"A{i}" for i in range(6)]
    torch.save(
        torch.tensor([[0, 1], [1, 2], [2, 3], [4, 5], [0, 5]]), root_mk(root) / "nc_edges-nodeid.pt"
    )
    torch.save(torch.tensor([0, 1, 2, -1, 1, 2]), root / "labels-w-missing.pt")
    torch.save(
        {"train_idx": torch.tensor([0, 1, 2]), "val_idx": torch.tensor([3, 4]), "test_idx": [5]},
        root / "split.pt",
    )
    torch.save({a: i for i, a in enumerate(asins)}, root / "node_mapping.pt")
    lines = [json.dumps({"asin": a, "raw_text": f"product {a}"}) for a in asins if a != "A3"]
    lines.append(json.dumps({"asin": "ZZZ", "raw_text": "not in the mapping"}))
    (root / "ele-fashion-raw-text.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for i in (0, 3, 4, 5):
        write_image(root / "images" / f"A{i}.jpg", seed=i)
    write_truncated_jpeg(root / "images" / "A1.jpg")
    (root / "class_names.json").write_text(json.dumps(["shoes", "bags", "hats"]))
    (root / "zero_shot_classes.json").write_text(json.dumps([2]))
    return root


def root_mk(root: Path) -> Path:
    root.mkdir(parents=True)
    return root


def test_mmgraph_reads_graph_targets_and_counts(mm_dir):
    stats = ReadStats()
    src = read_mmgraph(mm_dir, stats)
    g = src.graph
    assert g.node_ids == ["A0", "A1", "A2", "A3", "A4", "A5"]
    assert (stats.images_ok, stats.images_missing, stats.images_corrupt) == (4, 1, 1)
    assert stats.skipped == {
        "text_without_node": 1,
        "zero_shot_heldout_train": 1,
        "unlabeled": 1,
    }
    assert [g.images[i] is not None for i in range(6)] == [True, False, False, True, True, True]
    assert g.texts[3] is None and g.texts[0] == "product A0"
    edges = {
        (u, v, EdgeType(t).name)
        for (u, v), t in zip(g.edge_index.t().tolist(), g.edge_type.tolist(), strict=True)
        if u < v
    }
    assert edges == {
        (0, 1, "TEXT_TEXT"),  # A1's image is corrupt: no image-image edge
        (1, 2, "TEXT_TEXT"),
        (2, 3, "TEXT_IMAGE"),  # A2 text only, A3 image only: reachability edge
        (4, 5, "TEXT_TEXT"),
        (4, 5, "IMAGE_IMAGE"),
        (0, 5, "TEXT_TEXT"),
        (0, 5, "IMAGE_IMAGE"),
    }
    assert [(t.node, t.split, t.label, t.target_text) for t in src.targets] == [
        (0, "train", 0, "shoes"),
        (1, "train", 1, "bags"),  # its corrupt image does not drop it
        (4, "val", 1, "bags"),
        (5, "test", 2, "hats"),
    ]
    assert src.targets[0].prompt == "Product: product A0. Category:"
    rows = build_samples(src, DataConfig(tau=1, max_text_nodes=4, max_image_nodes=3))
    pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    assert [(r["split"], r["zero_shot"]) for r in rows] == [
        ("train", False),
        ("train", False),
        ("val", False),
        ("test", True),
    ]
    assert rows[0]["text_nodes"][0] == "product A0" and rows[0]["text_hops"] == [0, 1, 1]


def test_mmgraph_edge_to_unknown_node_names_file_and_row(mm_dir):
    torch.save(torch.tensor([[0, 1], [1, 2], [2, 6]]), mm_dir / "nc_edges-nodeid.pt")
    with pytest.raises(ValueError, match=r"nc_edges-nodeid\.pt: edge row 2 \[2, 6\]"):
        read_mmgraph(mm_dir, ReadStats())
    torch.save(torch.tensor([[0, 1], [-1, 2]]), mm_dir / "nc_edges-nodeid.pt")
    with pytest.raises(ValueError, match=r"nc_edges-nodeid\.pt: edge row 1"):
        read_mmgraph(mm_dir, ReadStats())


def test_mmgraph_nan_names_file(mm_dir):
    torch.save(
        {"train_idx": torch.tensor([0.0, float("nan")]), "val_idx": [3], "test_idx": [5]},
        mm_dir / "split.pt",
    )
    with pytest.raises(ValueError, match=r"split\.pt: NaN"):
        read_mmgraph(mm_dir, ReadStats())
    torch.save(
        torch.tensor([0.0, 1.0, float("nan"), -1.0, 1.0, 2.0]), mm_dir / "labels-w-missing.pt"
    )
    with pytest.raises(ValueError, match=r"labels-w-missing\.pt: NaN"):
        read_mmgraph(mm_dir, ReadStats())


def test_mmgraph_label_out_of_class_range(mm_dir):
    torch.save(torch.tensor([0, 1, 3, -1, 1, 2]), mm_dir / "labels-w-missing.pt")
    with pytest.raises(ValueError, match=r"label of node 2 is 3, not in \[-1, 3\)"):
        read_mmgraph(mm_dir, ReadStats())


def test_mmgraph_missing_file_is_named(mm_dir):
    (mm_dir / "split.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"split\.pt"):
        read_mmgraph(mm_dir, ReadStats())


def test_mmgraph_loads_with_weights_only(mm_dir):
    torch.save({"A0": NotAllowed()}, mm_dir / "node_mapping.pt")
    with pytest.raises(pickle.UnpicklingError):
        read_mmgraph(mm_dir, ReadStats())


def test_mmgraph_split_overlap_rejected(mm_dir):
    torch.save({"train_idx": [0, 1], "val_idx": [1], "test_idx": [5]}, mm_dir / "split.pt")
    with pytest.raises(ValueError, match="node 1 is in both train and val"):
        read_mmgraph(mm_dir, ReadStats())


# ------------------------------------------------------------------------------------ parquet


@pytest.fixture
def pq_dir(tmp_path):
    root = tmp_path / "pqgraph"
    root.mkdir()
    write_image(root / "img" / "a.jpg")
    absolute = write_image(tmp_path / "elsewhere" / "b.png", "PNG", seed=3)
    write_truncated_jpeg(root / "img" / "c.jpg")
    nodes = {
        "id": ["n0", "n1", "n2", "n3", "n4"],
        "text": ["first node", "second node", None, "fourth node", "fifth node"],
        "image_path": ["img/a.jpg", str(absolute), "img/c.jpg", "img/none.jpg", None],
        "label": [0, 1, None, 1, None],
        "split": ["train", "validation", None, "bogus", "test"],
        "target_text": [None, None, None, None, "a summary"],
    }
    pq.write_table(pa.table(nodes), root / "nodes.parquet")
    edges = {
        "src": ["n0", "n0", "n2", "n3"],
        "dst": ["n1", "n1", "n0", "n4"],
        "type": ["text-text", "image-image", "image-image", "text-text"],
    }
    pq.write_table(pa.table(edges), root / "edges.parquet")
    (root / "class_names.json").write_text(json.dumps(["cats", "dogs"]))
    return root


def test_parquet_graph(pq_dir, caplog):
    stats = ReadStats()
    with caplog.at_level(logging.WARNING):  # n1's image lies elsewhere: allowed explicitly
        src = read_parquet_graph(pq_dir, stats, allow_outside_images=True)
    g = src.graph
    assert (stats.images_ok, stats.images_missing, stats.images_corrupt) == (2, 1, 1)
    # n2's image is corrupt: its image-image edge is dropped, counted; n2 keeps no image.
    assert stats.skipped == {"edge_lost_image": 1, "unknown_split": 1}
    assert "bogus" in caplog.text
    assert g.images[0] == str((pq_dir / "img" / "a.jpg").resolve()) and g.images[2] is None
    assert g.num_edges == 6  # 3 undirected edges, both directions
    assert [(t.node, t.split, t.label, t.target_text) for t in src.targets] == [
        (0, "train", 0, "cats"),
        (1, "val", 1, "dogs"),
        (4, "test", None, "a summary"),
    ]
    rows = build_samples(src, DataConfig(tau=1, max_text_nodes=5, max_image_nodes=5))
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    assert table.column("sample_id").to_pylist() == ["pqgraph#n0", "pqgraph#n1", "pqgraph#n4"]


def test_parquet_unknown_node_names_file_row_and_id(pq_dir):
    edges = {"src": ["n0", "n1", "n1"], "dst": ["n1", "n3", "zz"], "type": ["text-text"] * 3}
    pq.write_table(pa.table(edges), pq_dir / "edges.parquet")
    with pytest.raises(ValueError, match=r"edges\.parquet: row 2: unknown node id 'zz'"):
        read_parquet_graph(pq_dir, ReadStats())


def test_parquet_missing_column_is_named(pq_dir):
    table = pq.read_table(pq_dir / "nodes.parquet").drop_columns(["split"])
    pq.write_table(table, pq_dir / "nodes.parquet")
    with pytest.raises(ValueError, match=r"nodes\.parquet: missing column 'split'"):
        read_parquet_graph(pq_dir, ReadStats())


def test_parquet_text_edge_to_textless_node_is_an_error(pq_dir):
    edges = {"src": ["n0"], "dst": ["n2"], "type": ["text-text"]}
    pq.write_table(pa.table(edges), pq_dir / "edges.parquet")
    with pytest.raises(ValueError, match=r"row 0: text-text edge but node 'n2' has no text"):
        read_parquet_graph(pq_dir, ReadStats())


def test_parquet_unknown_edge_type_names_row(pq_dir):
    edges = {"src": ["n0", "n0"], "dst": ["n1", "n3"], "type": ["text-text", "text-audio"]}
    pq.write_table(pa.table(edges), pq_dir / "edges.parquet")
    with pytest.raises(ValueError, match=r"edges\.parquet: row 1: unknown edge type 'text-audio'"):
        read_parquet_graph(pq_dir, ReadStats())


def test_mmgraph_bad_jsonl_line_is_named(mm_dir):
    path = mm_dir / "ele-fashion-raw-text.jsonl"
    path.write_text(path.read_text() + '{"asin": "A9"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"ele-fashion-raw-text\.jsonl:7:"):
        read_mmgraph(mm_dir, ReadStats())


def test_wikiweb2m_malformed_and_bad_parent(tmp_path):
    sections = [
        {"title": "A", "parent": 5, "first": "A first.", "rest": "A rest."},  # no section 5
        {"title": "B", "parent": 1, "first": "B first.", "rest": ""},  # its own parent
    ]
    ragged = example_pb2.SequenceExample.FromString(page_record(b"test", "R", sections))
    del ragged.feature_lists.feature_list["section_rest_sentence"].feature[1]
    path = tmp_path / "x.tfrecord.gz"
    write_tfrecords(path, [page_record(b"test", "P", sections), ragged.SerializeToString()])
    stats = ReadStats()
    (src,) = iter_wikiweb2m(path, tmp_path, stats)
    assert stats.skipped == {"bad_parent_index": 2, "malformed_record": 1}
    g = src.graph
    neighbours = {g.node_ids[v] for u, v in g.edge_index.t().tolist() if g.node_ids[u] == "page"}
    assert neighbours == {"section0", "section1"}  # both attached to the page instead


def test_wikiweb2m_gives_the_raw_layout_its_segments_captions_and_order(wiki):
    """What the LM reads of a page: each section's text without the captions (those stand
    at the images), the captions on the image nodes, the page's own order, and for a target
    the official "summarize: ... , summary:" around its text with the summary removed."""
    path, images = wiki
    (page, *_), _ = read_all(path, images)
    assert page.document_order
    assert page.segments[1] == (
        "History. The town was founded in 1850. It grew quickly after the railway arrived."
    )
    assert page.segments[0] == page.graph.texts[0] and page.segments[2] is None
    captions = dict(zip(page.graph.node_ids, page.captions, strict=True))
    assert captions["section0/image0"] == "Old map" and captions["section1/image0"] == "Field"
    assert captions["section0"] is None
    economy = page.targets[1]
    assert (economy.lead, economy.cue) == ("summarize: ", ", summary:")
    assert economy.segment == "Economy. Wheat and corn are grown."
    (row,) = [
        r for r in build_samples(page, DataConfig(tau=2)) if r["sample_id"].endswith("section1")
    ]
    assert row["text_segments"][0] == economy.segment
    # reading order = node index: page 0, section0 1, then (after the target) section2 5
    assert row["text_order"][0] == 3 and sorted(row["text_order"]) == [0, 1, 3, 5]
    field = str((images / "Field.png").resolve())
    own = row["image_paths"].index(field)
    assert row["image_owner"][own] == 0 and row["image_captions"][own] == "Field"
