"""The embedded benchmark generators: determinism, official formats, leak checks, task structure."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from g4mm.data.synthetic import (
    ATTRIBUTE_WORDS,
    COLOURS,
    COUNT_WORDS,
    PRODUCT_CLASS_NAMES,
    PRODUCT_COLOURS,
    SHAPE_GROUPS,
    corpus_texts,
    lm_copy_documents,
    parse_target_sentence,
    slot_accuracy,
    target_sentence,
    write_synthetic_docs,
    write_synthetic_products,
)
from g4mm.data.tfrecord import iter_tfrecords, parse_sequence_example

CONTEXT_FIELDS = {"split", "page_url", "page_title", "clean_page_description"}
SEQUENCE_FIELDS = {
    "section_title",
    "section_depth",
    "section_heading_level",
    "section_parent_index",
    "section_clean_1st_sentence",
    "section_rest_sentence",
    "section_image_url",
    "section_image_captions",
    "is_section_summarization_sample",
}
TARGET_RE = re.compile(r"^the (\w+) section under (\w+) shows (\w+) (\w+) (\w+)\.$")


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("docs")
    return out, write_synthetic_docs(out, num_pages=40, image_size=24, seed=0, shards=3)


@pytest.fixture(scope="module")
def pages(docs) -> list[tuple[dict, dict]]:
    out, _ = docs
    return [
        parse_sequence_example(r)
        for shard in sorted(out.glob("wikiweb2m-*.tfrecord.gz"))
        for r in iter_tfrecords(shard)
    ]


@pytest.fixture(scope="module")
def meta(docs) -> list[dict]:
    out, _ = docs
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def _digest(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (relative name -> hex)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


# ------------------------------------------------------------------------------------ docs


def test_docs_layout_and_counts(docs, pages):
    out, counts = docs
    assert counts["pages"] == len(pages) == 40
    assert counts["shards"] == [f"wikiweb2m-{i:05d}.tfrecord.gz" for i in range(3)]
    assert counts["pages_per_split"] == {"train": 32, "val": 4, "test": 4}
    assert sum(counts["targets"].values()) > 40
    assert all(counts["targets"][s] > 0 for s in ("train", "val", "test"))
    assert counts["sections"] == sum(len(s["section_title"]) for _, s in pages)
    params = json.loads((out / "synthetic.json").read_text())
    assert params["kind"] == "synthetic-docs"
    assert params["params"] == {"num_pages": 40, "image_size": 24, "seed": 0, "shards": 3}
    assert params["counts"] == counts


def test_docs_records_use_official_fields(pages):
    splits, after_child = Counter(), 0
    for context, seq in pages:
        assert set(context) == CONTEXT_FIELDS
        assert set(seq) == SEQUENCE_FIELDS
        n = len(seq["section_title"])
        assert all(len(v) == n for v in seq.values())
        splits[context["split"][0]] += 1
        for i in range(n):
            parent = seq["section_parent_index"][i][0]
            assert -1 <= parent < n and parent != i
            after_child += parent > i
            depth = seq["section_depth"][i][0]
            assert depth == (0 if parent < 0 else seq["section_depth"][parent][0] + 1)
            assert seq["section_heading_level"][i] == [depth + 2]
            assert len(seq["section_image_url"][i]) == len(seq["section_image_captions"][i])
            assert seq["is_section_summarization_sample"][i][0] in (0, 1)
    assert set(splits) == {"train", "val", "test"}
    # sections are listed in a random order: reading order says nothing of the tree
    assert after_child > 0


def test_docs_images_and_manifest(docs, meta):
    out, counts = docs
    with open(out / "images" / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == counts["images"] == sum(len(m["images"]) for m in meta)
    suffixes = {Path(r["path"]).suffix for r in rows}
    assert suffixes == {".png", ".jpg"}
    for r in rows[:50]:
        with Image.open(out / "images" / r["path"]) as img:
            assert img.size == (24, 24) and img.mode == "RGB"
        # neither the URL nor the file name tells anything about the picture
        assert not _words(r["url"] + " " + r["path"]) & ATTRIBUTE_WORDS


def test_docs_deterministic_and_seed_dependent(docs, tmp_path):
    out, _ = docs
    same = write_synthetic_docs(tmp_path / "a", num_pages=40, image_size=24, seed=0, shards=3)
    assert _digest(tmp_path / "a") == _digest(out)
    assert same == json.loads((out / "synthetic.json").read_text())["counts"]
    write_synthetic_docs(tmp_path / "b", num_pages=40, image_size=24, seed=1, shards=3)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a["wikiweb2m-00000.tfrecord.gz"] != b["wikiweb2m-00000.tfrecord.gz"]
    shared = set(a) & set(b) - {"synthetic.json"}
    assert sum(a[k] != b[k] for k in shared) > 0.9 * len(shared)


def test_no_attribute_word_outside_target_sentences(pages):
    for context, seq in pages:
        texts = [context["page_title"][0], context["clean_page_description"][0]]
        for i in range(len(seq["section_title"])):
            texts += seq["section_title"][i] + seq["section_rest_sentence"][i]
            texts += seq["section_image_captions"][i] + seq["section_image_url"][i]
            if not seq["is_section_summarization_sample"][i][0]:
                texts += seq["section_clean_1st_sentence"][i]
        leaked = set().union(*map(_words, texts)) & ATTRIBUTE_WORDS
        assert not leaked, (context["page_url"], leaked)


def test_no_other_target_within_two_hops(pages):
    for _, seq in pages:
        parents = [p[0] for p in seq["section_parent_index"]]
        targets = [i for i, f in enumerate(seq["is_section_summarization_sample"]) if f[0]]
        for t in targets:
            near = {parents[t], *(i for i, p in enumerate(parents) if p in (t, parents[t]))}
            near |= {parents[parents[t]]} if parents[t] >= 0 else set()
            assert not (near - {t}) & set(targets)


def _section_graph_hops(parents: list[int], target: int, n_images: list[int]) -> dict:
    """Hop distance of each image (section, k) from ``target``, on the DATA-SPEC graph."""
    nodes = {("page",)} | {("sec", i) for i in range(len(parents))}
    nodes |= {("img", i, k) for i in range(len(parents)) for k in range(n_images[i])}
    adj: dict = {v: set() for v in nodes}

    def link(a, b):
        adj[a].add(b)
        adj[b].add(a)

    for i, p in enumerate(parents):
        link(("sec", i), ("page",) if p < 0 else ("sec", p))
        for k in range(n_images[i]):
            link(("sec", i), ("img", i, k))
            for k2 in range(k):
                link(("img", i, k), ("img", i, k2))
            for k2 in range(n_images[p] if p >= 0 else 0):
                link(("img", i, k), ("img", p, k2))
    hops, frontier = {("sec", target): 0}, [("sec", target)]
    for hop in (1, 2):
        frontier = [u for v in frontier for u in adj[v] if u not in hops]
        hops.update((u, hop) for u in frontier)
    return {v: h for v, h in hops.items() if v[0] == "img"}


def _dominant_colour(path: Path) -> str:
    """Nearest palette colour of the most saturated pixels (re-derived from pixels)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=float).reshape(-1, 3)
    sat = rgb.max(1) - rgb.min(1)
    mean = rgb[sat >= np.quantile(sat, 0.9)].mean(0)
    return min(COLOURS, key=lambda c: np.sum((np.array(COLOURS[c]) - mean) ** 2))


def test_target_sentence_matches_own_image_and_parent(docs, pages, meta):
    out, _ = docs
    checked = 0
    for (context, seq), m in zip(pages, meta, strict=True):
        assert m["page_url"] == context["page_url"][0]
        images = {im["url"]: im for im in m["images"]}
        for t in m["targets"]:
            i = t["section"]
            assert seq["is_section_summarization_sample"][i] == [1]
            topic, parent_topic, count, colour, shape = TARGET_RE.match(
                seq["section_clean_1st_sentence"][i][0]
            ).groups()
            own = images[seq["section_image_url"][i][0]]
            assert own["url"] == t["answer_url"]
            assert (colour, COUNT_WORDS.index(count) + 1) == (own["colour"], own["count"])
            assert shape.rstrip("s") == own["shape"]
            assert _dominant_colour(out / "images" / own["path"]) == colour
            # own topic in own text (prompt); parent topic only via the parent section
            assert (
                topic == seq["section_title"][i][0] and topic in seq["section_rest_sentence"][i][0]
            )
            parent = seq["section_parent_index"][i][0]
            assert parent_topic == seq["section_title"][parent][0]
            assert parent_topic not in seq["section_rest_sentence"][i][0]
            checked += 1
    assert checked == sum(len(m["targets"]) for m in meta)


def test_answer_image_needs_structure(pages, meta):
    """The answer is the only hop-1 image; 2..4 distractors of distinct colours at hop 2."""
    ks = Counter()
    for (_, seq), m in zip(pages, meta, strict=True):
        parents = [p[0] for p in seq["section_parent_index"]]
        n_images = [len(u) for u in seq["section_image_url"]]
        colour = {im["url"]: im["colour"] for im in m["images"]}
        for t in m["targets"]:
            hops = _section_graph_hops(parents, t["section"], n_images)
            assert [v for v, h in hops.items() if h == 1] == [("img", t["section"], 0)]
            hop2 = [v for v, h in hops.items() if h == 2]
            assert 2 <= len(hop2) <= 4
            assert {v[1] for v in hop2} <= {parents[t["section"]], *range(len(parents))}
            urls = [seq["section_image_url"][v[1]][v[2]] for v in hops]
            assert len({colour[u] for u in urls}) == len(urls)  # bag of images: chance 1/k
            ks[len(urls)] += 1
    assert set(ks) == {3, 4, 5}


def test_docs_corpus_texts(docs, pages):
    out, _ = docs
    texts = list(corpus_texts(out))
    train = [ctx for ctx, _ in pages if ctx["split"][0] == "train"]
    assert train[0]["page_title"][0] in texts
    vocab = set().union(*map(_words, texts))
    assert ATTRIBUTE_WORDS & vocab  # train targets carry the attribute words
    assert len(vocab) < 400
    # val / test target sentences never reach the tiny LM's corpus (all pages on request)
    held_out = {
        first[0]
        for ctx, seq in pages
        if ctx["split"][0] != "train"
        for first, is_target in zip(seq["section_clean_1st_sentence"],
                                    seq["is_section_summarization_sample"], strict=True)
        if is_target[0]
    }  # fmt: skip
    assert held_out and not held_out & set(texts)
    assert held_out <= set(corpus_texts(out, splits=None))


def test_lm_copy_documents_hint_names_exactly_what_the_prompt_lacks():
    docs = lm_copy_documents("synthetic-docs", 200, seed=3)
    assert docs == lm_copy_documents("synthetic-docs", 200, seed=3)
    assert docs != lm_copy_documents("synthetic-docs", 200, seed=4)
    lengths = Counter()
    for context, answer in docs:
        # the raw layout of a fresh page: its own text first, its neighbours', the cue, and
        # the hint where after_text puts the graph tokens
        text, hint = context.split(", summary: ")
        assert text.startswith("summarize: ")
        topic = text.removeprefix("summarize: ").split(".")[0]
        assert answer == f"the {topic} section {hint}."  # the hint is the answer's tail
        assert hint.split()[1] != topic  # the parent
        assert not ATTRIBUTE_WORDS & _words(text)  # visual words only in the hint
        lengths[text.count(" section ") // 5] += 1  # every neighbourhood size
    assert len(lengths) >= 2
    assert len({a for _, a in docs}) == len(docs)  # fresh draws, no repeats
    for context, answer in lm_copy_documents("synthetic-products", 50, seed=0):
        assert answer in PRODUCT_CLASS_NAMES and context.endswith(f"Category: {answer}")
    with pytest.raises(ValueError, match="unknown kind"):
        lm_copy_documents("wikiweb2m", 1, 0)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_pages"):
        write_synthetic_docs(tmp_path, num_pages=0)
    with pytest.raises(ValueError, match="image_size"):
        write_synthetic_products(tmp_path, num_products=50, image_size=4)
    with pytest.raises(ValueError, match="no synthetic dataset"):
        corpus_texts(tmp_path / "nothing")


# -------------------------------------------------------------------------------- products


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("products")
    return out, write_synthetic_products(out, num_products=400, image_size=16, seed=0)


def _load(path: Path):
    return torch.load(path, weights_only=True)


def test_products_files_load_weights_only(products):
    out, counts = products
    edges = _load(out / "nc_edges-nodeid.pt")
    labels = _load(out / "labels-w-missing.pt")
    split = _load(out / "split.pt")
    mapping = _load(out / "node_mapping.pt")
    assert edges.dtype == labels.dtype == torch.long and edges.shape == (counts["edges"], 2)
    assert labels.shape == (400,) and (labels == -1).any()
    assert int(labels.max()) < len(PRODUCT_CLASS_NAMES)
    assert set(split) == {"train_idx", "val_idx", "test_idx"}
    assert sorted(mapping.values()) == list(range(400))
    rows = [
        json.loads(x)
        for x in (out / "synthetic-products-raw-text.jsonl").read_text().split("\n")
        if x
    ]
    assert [mapping[r["asin"]] for r in rows] == list(range(400))
    for asin in list(mapping)[:20]:
        with Image.open(out / "images" / f"{asin}.jpg") as img:
            assert img.size == (16, 16)
    assert json.loads((out / "class_names.json").read_text()) == PRODUCT_CLASS_NAMES
    assert torch.bincount(edges.flatten(), minlength=400).min() >= 1


def test_products_titles_do_not_name_colour_or_class(products):
    out, _ = products
    for line in (out / "synthetic-products-raw-text.jsonl").read_text().splitlines():
        assert not _words(json.loads(line)["raw_text"]) & ATTRIBUTE_WORDS


def test_product_class_depends_on_neighbours_images(products):
    out, _ = products
    edges = _load(out / "nc_edges-nodeid.pt").tolist()
    labels = _load(out / "labels-w-missing.pt").tolist()
    attrs = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    groups = list(SHAPE_GROUPS)
    neighbours: dict[int, list[int]] = {i: [] for i in range(len(attrs))}
    for u, v in edges:
        neighbours[u].append(v)
        neighbours[v].append(u)
    by_own: dict[tuple[str, str], set[int]] = {}
    for i, a in enumerate(attrs):
        if labels[i] < 0:
            continue
        votes = Counter(attrs[j]["group"] for j in neighbours[i])
        top = max(votes.values())
        tied = [g for g in groups if votes[g] == top]  # in group order
        major = a["group"] if a["group"] in tied else tied[0]
        expected = list(PRODUCT_COLOURS).index(a["colour"]) * len(groups) + groups.index(major)
        assert labels[i] == expected
        by_own.setdefault((a["colour"], a["group"]), set()).add(labels[i])
    # the own image (colour and shape group) never determines the class alone
    assert all(len(classes) >= 2 for classes in by_own.values())


def test_product_zero_shot_classes_held_out_of_train(products):
    out, counts = products
    labels = _load(out / "labels-w-missing.pt")
    split = _load(out / "split.pt")
    zero = json.loads((out / "zero_shot_classes.json").read_text())
    assert zero == counts["zero_shot_classes"] and len(zero) == len(SHAPE_GROUPS)
    names = [PRODUCT_CLASS_NAMES[c].split() for c in zero]
    # a Latin square: every colour and every group held out at most once...
    assert len({n[0] for n in names}) == len({n[1] for n in names}) == len(SHAPE_GROUPS)
    held = torch.tensor(zero)
    assert not torch.isin(labels[split["train_idx"]], held).any()
    # ... so training pairs every held-out colour with the other groups, every group with
    # other colours: nothing in the training targets ties a colour to one group
    trained = {PRODUCT_CLASS_NAMES[c] for c in labels[split["train_idx"]].unique().tolist()}
    for colour, group in names:
        assert {n.split()[1] for n in trained if n.startswith(colour + " ")} == (
            set(SHAPE_GROUPS) - {group}
        )
        assert sum(n.endswith(" " + group) for n in trained) == len(PRODUCT_COLOURS) - 1
    assert torch.isin(labels[split["val_idx"]], held).any()
    assert torch.isin(labels[split["test_idx"]], held).any()
    all_idx = torch.cat(list(split.values()))
    assert all_idx.unique().numel() == all_idx.numel() and (labels[all_idx] >= 0).all()


def test_products_deterministic(products, tmp_path):
    out, _ = products
    write_synthetic_products(tmp_path / "a", num_products=400, image_size=16, seed=0)
    a = _digest(tmp_path / "a")
    assert a == _digest(out)
    write_synthetic_products(tmp_path / "b", num_products=400, image_size=16, seed=1)
    assert _digest(tmp_path / "b")["nc_edges-nodeid.pt"] != a["nc_edges-nodeid.pt"]


def test_products_corpus_texts(products):
    out, _ = products
    texts = list(corpus_texts(out))
    assert len(texts) == 400 + len(PRODUCT_CLASS_NAMES)
    assert texts[-len(PRODUCT_CLASS_NAMES) :] == PRODUCT_CLASS_NAMES


def _file_digests(root: Path) -> dict[str, str]:
    """md5 of every file's content (gzip members decompressed: their header holds a time)."""
    import gzip

    digests = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        digests[str(path.relative_to(root))] = hashlib.md5(data).hexdigest()
    return digests


def test_docs_generated_in_parallel_chunks_are_the_same_files(tmp_path):
    """Pages and images made in 5 chunks by 2 processes (as the pipeline does with Ray tasks)
    are byte for byte the serial generator's."""
    from concurrent.futures import ProcessPoolExecutor

    serial = write_synthetic_docs(tmp_path / "serial", num_pages=30, seed=4)
    with ProcessPoolExecutor(2) as pool:
        chunked = write_synthetic_docs(
            tmp_path / "chunked", num_pages=30, seed=4, chunks=5,
            map_chunks=lambda fn, jobs: list(pool.map(fn, jobs)),
        )  # fmt: skip
    assert chunked == serial
    digests = _file_digests(tmp_path / "serial")
    assert len(digests) > 30 + 3
    assert _file_digests(tmp_path / "chunked") == digests


def test_synthetic_generator_imports_neither_pyg_nor_transformers():
    """Ray workers that generate pages import this module: it must stay light."""
    import subprocess
    import sys

    code = (
        "import sys, g4mm.data.synthetic; "
        "print(sorted(m for m in ('torch_geometric', 'transformers', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_target_sentences_parse_back_into_their_slots():
    from g4mm.data.synthetic import ImageAttributes

    for count, shape in ((1, "circle"), (3, "square")):
        attrs = ImageAttributes(shape=shape, colour="red", count=count, texture="plain",
                                rgb=(200, 0, 0))  # fmt: skip
        sentence = target_sentence("theater", "harbor", attrs)
        assert parse_target_sentence(sentence) == {"topic": "theater", "parent": "harbor",
            "count": COUNT_WORDS[count - 1], "colour": "red", "shape": shape}  # fmt: skip
    assert parse_target_sentence("a sentence of another shape.") is None


def test_slot_accuracy_counts_each_word_and_misses_unparsable_predictions():
    reference = "the theater section under harbor shows three purple squares."
    pairs = [
        ("the theater section under library shows three purple squares.", reference),
        ("the theater section under harbor shows two purple circles", reference),
        ("purple squares", reference),  # unparsable: misses every slot
        (reference, reference),
    ]
    assert slot_accuracy(pairs) == {"topic": 0.75, "parent": 0.5, "count": 0.5,
                                    "colour": 0.75, "shape": 0.5}  # fmt: skip
    with pytest.raises(ValueError, match="not a synthetic-docs target"):
        slot_accuracy([("x", "not a target")])
    with pytest.raises(ValueError, match="at least one"):
        slot_accuracy([])
