"""The Ray Data preprocess + embed pipeline on a real local Ray (2 CPUs) with real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from PIL import Image

from g4mm.config import load_config
from g4mm.data.schema import SAMPLE_SCHEMA, feature_key
from g4mm.pipeline.cache import DONE, cache_key

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local():
    from g4mm.pipeline.ray_runtime import configure_data_context

    ray.init(num_cpus=2, include_dashboard=False)
    configure_data_context(progress_bars=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory) -> str:
    """Tiny backbones built once (barely pretrained: the pipeline only needs them loadable)."""
    from g4mm.data.corpus import ensure_tiny_backbones

    art = tmp_path_factory.mktemp("artifacts")
    cfg = load_config("smoke", [f"data.artifact_dir={art}"])
    corpus = [f"section {i} about the red circle and blue square, page {i % 7}" for i in range(200)]
    ensure_tiny_backbones(cfg, corpus, pretrain_steps=2)
    return str(art)


def _read_split_dirs(key_dir: Path) -> dict[str, pa.Table]:
    root = key_dir / "samples"
    return {p.name: pq.read_table(str(p)) for p in sorted(root.iterdir()) if p.is_dir()}


# ------------------------------------------------------------------ synthetic docs end to end


@pytest.fixture(scope="module")
def docs_run(ray_local, artifact_dir, tmp_path_factory):
    from g4mm.pipeline import run_preprocess

    out = tmp_path_factory.mktemp("prep-docs")
    cfg = load_config("smoke", [f"data.artifact_dir={artifact_dir}", "data.num_blocks=4"])
    first = run_preprocess(cfg, out)
    second = run_preprocess(cfg, out)
    return cfg, out, first, second


@pytest.mark.slow
def test_synthetic_docs_counts_in_equal_counts_out(docs_run):
    _cfg, out, report, _ = docs_run
    assert report["cache_hit"] is False
    assert report["targets"] > 0
    # every target the reader produced is a sample or a counted skip of the sample builder
    assert report["targets"] == sum(report["samples"].values()) + report["build_skipped"]
    key_dir = out / report["cache_key"]
    assert (key_dir / DONE).is_file()
    assert json.loads((key_dir / "report.json").read_text())["samples"] == report["samples"]
    tables = _read_split_dirs(key_dir)
    assert {s: t.num_rows for s, t in tables.items()} == report["samples"]
    assert set(report["samples"]) <= {"train", "val", "test"}
    for split, table in tables.items():
        assert table.schema.equals(SAMPLE_SCHEMA, check_metadata=False), split
        assert set(table.column("split").to_pylist()) == {split}
    ids = [i for t in tables.values() for i in t.column("sample_id").to_pylist()]
    assert len(ids) == len(set(ids))
    imgs = report["images"]
    assert imgs["ok"] > 0
    assert report["seconds"] > 0 and report["samples_per_s"] > 0


@pytest.mark.slow
def test_features_cover_every_text_and_image(docs_run):
    from g4mm.pipeline import load_features

    _cfg, out, report, _ = docs_run
    key_dir = out / report["cache_key"]
    text_feats, image_feats = load_features(key_dir)
    assert report["features"] == {"text": len(text_feats), "image": len(image_feats)}
    for table in _read_split_dirs(key_dir).values():
        for texts in table.column("text_nodes").to_pylist():
            assert all(feature_key("text", t) in text_feats for t in texts if t)
        for paths in table.column("image_paths").to_pylist():
            assert all(feature_key("image", p) in image_feats for p in paths)
    vec = next(iter(text_feats.values()))
    assert vec.dtype.name == "float32" and vec.ndim == 1 and vec.shape[0] > 0


@pytest.mark.slow
def test_rerun_is_a_cache_hit_without_recomputation(docs_run, capsys):
    from g4mm.pipeline import run_preprocess

    cfg, out, first, second = docs_run
    assert second["cache_hit"] is True
    assert second["cache_key"] == first["cache_key"]
    assert second["samples"] == first["samples"] and second["images"] == first["images"]
    assert second["stages_run"] == [] and second["embedded"] == {"text": 0, "image": 0}
    third = run_preprocess(cfg, out)
    assert f"cache hit: {out / first['cache_key']}" in capsys.readouterr().out
    assert third["cache_hit"] is True


@pytest.mark.slow
def test_workers_see_disjoint_complete_shards(docs_run):
    from g4mm.pipeline import load_split_dataset

    _cfg, out, report, _ = docs_run
    ds = load_split_dataset(out / report["cache_key"], "train")
    shards = ds.streaming_split(2, equal=False)
    seen: list[list[str]] = [[], []]

    def consume(rank: int) -> None:
        for batch in shards[rank].iter_batches(batch_size=8, batch_format="pyarrow"):
            seen[rank].extend(batch.column("sample_id").to_pylist())

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    a, b = set(seen[0]), set(seen[1])
    assert not (a & b)
    assert len(a | b) == report["samples"]["train"] == len(seen[0]) + len(seen[1])


# --------------------------------------------------------- parquet layout with bad images


def _write_parquet_dataset(root: Path, n: int = 12) -> None:
    """``n`` nodes in a path graph, images for each; image 3 missing, image 5 truncated."""
    (root / "images").mkdir(parents=True)
    paths = []
    for i in range(n):
        Image.new("RGB", (16, 16), (20 * i, 0, 255 - 20 * i)).save(root / "images" / f"{i}.png")
        paths.append(f"images/{i}.png")
    paths[3] = "images/missing.png"
    data = (root / "images" / "5.png").read_bytes()
    (root / "images" / "5.png").write_bytes(data[: len(data) // 2])
    nodes = {
        "id": [f"n{i}" for i in range(n)],
        "text": [f"node {i} text about colour {i % 3}" for i in range(n)],
        "image_path": paths,
        "label": [i % 3 for i in range(n)],
        "split": [("train", "val", "test")[i % 3] for i in range(n)],
        "target_text": [None] * n,
    }
    pq.write_table(pa.table(nodes), root / "nodes.parquet")
    src, dst = [f"n{i}" for i in range(n - 1)], [f"n{i + 1}" for i in range(n - 1)]
    kinds = ["text-text"] * (n - 1) + ["image-image"] * (n - 1)
    pq.write_table(
        pa.table({"src": src * 2, "dst": dst * 2, "type": kinds}), root / "edges.parquet"
    )
    (root / "class_names.json").write_text(json.dumps(["red", "green", "blue"]))


@pytest.mark.slow
def test_parquet_bad_images_counted_not_dropped(ray_local, artifact_dir, tmp_path):
    from g4mm.pipeline import run_preprocess

    _write_parquet_dataset(tmp_path / "ds")
    sets = [f"data.artifact_dir={artifact_dir}", "data.dataset=parquet"]
    cfg = load_config("smoke", [*sets, f"data.input={tmp_path / 'ds'}", "data.num_blocks=3"])
    report = run_preprocess(cfg, tmp_path / "out")
    assert report["images"] == {"ok": 10, "missing": 1, "corrupt": 1}
    assert report["samples"] == {"train": 4, "val": 4, "test": 4}  # no sample dropped
    key_dir = tmp_path / "out" / report["cache_key"]
    paths = {
        p
        for t in _read_split_dirs(key_dir).values()
        for ps in t["image_paths"].to_pylist()
        for p in ps
    }
    assert paths and not any(p.endswith(("missing.png", "/5.png")) for p in paths)
    assert report["features"]["image"] == len(paths)

    # the source's classes travel with the samples; a zero-shot metric without held-out
    # classes stops before training, naming the file it needs
    from g4mm.train.components import ClassesError, evaluation_classes

    classes = json.loads((key_dir / "classes.json").read_text())
    assert classes == {"class_names": ["red", "green", "blue"], "zero_shot_classes": None,
                       "input": str(tmp_path / "ds")}  # fmt: skip
    assert evaluation_classes(cfg, str(key_dir)) == (["red", "green", "blue"], None)
    zero_shot = cfg.updated({"eval.metrics": ["accuracy", "zero_shot_accuracy"],
                             "tune.metric": "accuracy"})
    with pytest.raises(ClassesError, match=str(tmp_path / "ds" / "zero_shot_classes.json")):
        evaluation_classes(zero_shot, str(key_dir))
    (key_dir / "classes.json").write_text(json.dumps({**classes, "class_names": None,
                                                      "zero_shot_classes": [2]}))  # fmt: skip
    with pytest.raises(ClassesError, match=str(tmp_path / "ds" / "class_names.json")):
        evaluation_classes(zero_shot, str(key_dir))
    (key_dir / "classes.json").write_text(json.dumps(classes))

    # a previous output without DONE (crash mid-write) is rebuilt, not trusted
    (key_dir / DONE).unlink()
    (key_dir / "samples" / "train").rename(key_dir / "samples" / "broken")
    again = run_preprocess(cfg, tmp_path / "out")
    assert again["cache_hit"] is False and again["samples"] == report["samples"]
    assert (key_dir / DONE).is_file() and not (key_dir / "samples" / "broken").exists()
    assert not list((tmp_path / "out").glob(".tmp-*"))


@pytest.mark.slow
def test_wikiweb2m_corrupt_shard_is_counted(ray_local, artifact_dir, tmp_path):
    from g4mm.data.synthetic import write_synthetic_docs
    from g4mm.pipeline import run_preprocess

    raw = tmp_path / "raw"
    write_synthetic_docs(raw, num_pages=8, image_size=16, seed=3, shards=2)
    shards = sorted(raw.glob("*.tfrecord.gz"))
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])  # truncated gzip stream
    sets = [f"data.artifact_dir={artifact_dir}", "data.dataset=wikiweb2m", "data.num_blocks=4"]
    cfg = load_config("smoke", [*sets, f"data.input={raw}", f"data.images={raw / 'images'}"])
    report = run_preprocess(cfg, tmp_path / "out")
    assert report["skipped"].get("corrupt_tfrecord_file") == 1
    assert sum(report["samples"].values()) > 0
    assert report["targets"] == sum(report["samples"].values()) + report["build_skipped"]


# ------------------------------------------------------------------------ cache key, CLI


def test_cache_key_tracks_content_not_parallelism(artifact_dir):
    base = load_config("smoke", [f"data.artifact_dir={artifact_dir}"])
    key = cache_key(base)
    assert key is not None
    same = load_config("smoke", [f"data.artifact_dir={artifact_dir}", "data.num_blocks=3"])
    assert cache_key(same) == key
    for change in ("data.tau=1", "data.num_pages=25", "data.seed=1", "data.max_text_nodes=5"):
        other = load_config("smoke", [f"data.artifact_dir={artifact_dir}", change])
        assert cache_key(other) != key, change


def test_cache_key_tracks_the_synthetic_generator_version(artifact_dir, monkeypatch):
    from g4mm.data import versions

    cfg = load_config("smoke", [f"data.artifact_dir={artifact_dir}"])
    key = cache_key(cfg)
    monkeypatch.setattr(versions, "GENERATOR_VERSION", versions.GENERATOR_VERSION + 1)
    assert cache_key(cfg) not in (None, key)


def test_a_tiny_lm_built_for_other_data_is_stale_and_keys_nothing(artifact_dir, tmp_path):
    """A tiny LM stamped with another dataset's recipe (a shared data.artifact_dir) is not
    used: no cache key until the pipeline rebuilds it; one built by hand records no recipe."""
    from g4mm.pipeline.cache import stale_tiny_backbones, tiny_recipes

    art = tmp_path / "artifacts"
    shutil.copytree(Path(artifact_dir) / "backbones", art / "backbones")
    cfg = load_config("smoke", [f"data.artifact_dir={art}"])
    assert stale_tiny_backbones(cfg) == [] and cache_key(cfg) is not None  # by hand: used
    stamp_file = art / "backbones" / "tiny-lm" / "g4mm_build.json"
    stamp = json.loads(stamp_file.read_text())
    stamp["recipe"] = json.loads(json.dumps(tiny_recipes(cfg)["lm"], default=str))
    stamp_file.write_text(json.dumps(stamp))
    assert stale_tiny_backbones(cfg) == [] and cache_key(cfg) is not None  # for this data
    products = load_config("smoke", [f"data.artifact_dir={art}", "data.dataset=synthetic-products"])
    assert stale_tiny_backbones(products) == ["lm"] and cache_key(products) is None
    other_pages = load_config("smoke", [f"data.artifact_dir={art}", "data.num_pages=99"])
    assert stale_tiny_backbones(other_pages) == ["lm"]
    # a run whose tiny LM was switched to another recipe's build after it preprocessed (two
    # runs of different data at once in one artifact dir) stops before loading it
    from g4mm.train.components import build_components

    with pytest.raises(RuntimeError, match=r"tiny lm in .* is now built from another recipe"):
        build_components(other_pages, str(tmp_path / "prep-of-99-pages"), torch.device("cpu"))


def test_the_tiny_lm_corpus_holds_train_samples_only(ray_local):
    """Nothing of a val or test sample reaches the frozen LM, neighbours' texts included."""
    from g4mm.pipeline.preprocess import _corpus

    def row(texts, prompt, target, is_sample, split):
        return {"text_nodes": texts, "prompt": prompt, "target_text": target,
                "_is_sample": is_sample, "split": split}  # fmt: skip

    rows = ray.data.from_items([
        row(["train page", "shared"], "p1", "train answer", True, "train"),
        row(["SECRET neighbour", "shared"], "p2", "SECRET answer", True, "test"),
        row(["SECRET val text"], "p3", "SECRET val answer", True, "val"),
        row(["train page", "another"], "p1", "second answer", True, "train"),
        row(["not a sample"], "", "", False, "train"),
    ])  # fmt: skip
    corpus = _corpus(rows)
    assert sorted(corpus) == sorted(
        ["train page", "shared", "another", "p1", "train answer", "second answer"]
    )


def test_source_fingerprint_covers_images_outside_the_input(tmp_path):
    """A parquet image_path or a manifest row may name an image anywhere: changing it must
    change the fingerprint (the input directory's listing does not see it)."""
    from g4mm.pipeline.cache import source_fingerprint

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    outside = elsewhere / "a.png"
    Image.new("RGB", (4, 4)).save(outside)
    table = {"id": ["a", "b"], "text": ["t", "u"], "split": ["train", "val"],
             "image_path": [str(outside), "inside.png"]}  # fmt: skip
    pq.write_table(pa.table(table), data / "nodes.parquet")
    (data / "manifest.csv").write_text(f"url,path\nhttp://x/a.png,{outside}\n")
    for dataset in ("parquet", "wikiweb2m"):
        cfg = load_config("smoke", [f"data.dataset={dataset}", f"data.input={data}"])
        before = source_fingerprint(cfg)
        assert [f[0] for f in before["outside_files"]] == [str(outside)], dataset
        Image.new("RGB", (8, 8), (255, 0, 0)).save(outside)
        assert source_fingerprint(cfg) != before, dataset


def test_cache_key_none_until_tiny_backbones_exist(tmp_path):
    assert cache_key(load_config("smoke", [f"data.artifact_dir={tmp_path}"])) is None


def test_cli_help_and_missing_input(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "jobs/preprocess.py", *args], capture_output=True, text=True, cwd=ROOT
        )

    proc = run("--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout and "--dataset" in proc.stdout
    proc = run("--dataset", "mmgraph", "--output", str(tmp_path))
    assert proc.returncode == 2 and "--input DIR is required" in proc.stderr
    proc = run("--dataset", "parquet", "--input", str(tmp_path / "nope"), "--output", str(tmp_path))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = run("--dataset", "mmgraph", "--input", "README.md", "--output", str(tmp_path))
    assert proc.returncode == 2 and "README.md: not a directory" in proc.stderr
    (tmp_path / "empty").mkdir()
    empty = str(tmp_path / "empty")
    proc = run("--dataset", "parquet", "--input", empty, "--output", str(tmp_path))
    assert proc.returncode == 2 and "the directory is empty" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_bad_input_directory_is_one_line_not_a_traceback(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not MM-GRAPH")
    proc = subprocess.run(
        [sys.executable, "jobs/preprocess.py", "--dataset", "mmgraph", "--input",
         str(tmp_path / "junk"), "--output", str(tmp_path / "out"), "--num-cpus", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: MM-GRAPH: required file {tmp_path / 'junk'}/labels-w-missing.pt "
                      "is missing"]  # fmt: skip
    assert "Traceback" not in proc.stderr and "Unhandled error" not in proc.stderr


def test_preprocess_driver_and_cache_key_import_no_model_libraries(artifact_dir):
    """The driver decides cache hit or miss and merges read stats without transformers or
    torch_geometric (the Ray workers that need them import them): seconds of serial start-up
    on a small machine."""
    code = (
        "import sys; from g4mm.config import load_config; "
        "from g4mm.pipeline.cache import cache_key; import g4mm.pipeline.preprocess; "
        "from g4mm.data.records import ReadStats; ReadStats(); "
        f"key = cache_key(load_config('smoke', ['data.artifact_dir={artifact_dir}'])); "
        "assert key is not None; "
        "print(sorted(m for m in ('torch', 'torch_geometric', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ray_training_epochs_read_the_train_split_in_new_orders(docs_run):
    """What each Ray Train worker iterates (the train dataset as fit() passes it, one epoch
    per execution): every epoch is a permutation of the split, epochs differ (blocks in a new
    order, rows through the local shuffle buffer) rather than repeating the stored order (a
    page's samples side by side), and the same seeds give the same orders. Ray Data keeps
    block order here (``preserve_order``), so only the shuffle can reorder rows."""
    from ray.data import DataContext

    from g4mm.data.prepared import split_path
    from g4mm.train.ray_train import epoch_batches, train_dataset

    _cfg, out, report, _ = docs_run
    prep_dir = out / report["cache_key"]
    stored = pq.read_table(split_path(prep_dir, "train")).column("sample_id").to_pylist()

    def ids(batch) -> list[str]:
        return list(batch["sample_id"])

    def epochs(seed: int) -> list[list[str]]:
        shard = train_dataset(prep_dir, seed=seed).iterator()
        return [
            [i for batch in epoch_batches(shard, ids, 1, 0, seed + 10_000 * e) for i in batch]
            for e in range(2)
        ]

    options = DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        first, again = epochs(0), epochs(0)
    finally:
        options.preserve_order = before
    assert len(stored) >= 20
    for epoch in first:
        assert sorted(epoch) == sorted(stored)
        assert epoch != stored
    assert first[0] != first[1]
    assert again == first


@pytest.mark.slow
def test_inspect_shows_what_the_lm_reads_for_each_variant(docs_run):
    """jobs/inspect.py on the WikiWeb2M-format default input: the sample id first, then the
    target's own text, its neighbours' sections, graph tokens at each image (hop_diffused,
    at_images), none for text_only, and the target."""
    cfg, _out, report, _ = docs_run
    prep = report["output"]
    rows = pq.read_table(str(Path(prep) / "samples" / "val")).to_pylist()
    row = min(rows, key=lambda r: r["sample_id"])  # --index 0: the first in sample_id order

    def inspect(*overrides: str) -> list[str]:
        proc = subprocess.run(
            [sys.executable, "jobs/inspect.py", "--prep", prep, "--split", "val",
             "--index", "0", "--config", "smoke", "--set",
             f"data.artifact_dir={cfg.data.artifact_dir}", *overrides],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()

    # a budget the whole subgraph fits in (the hand-built tokenizer is nearly byte-level)
    lines = inspect(
        "--set", "model.token_placement=at_images", "--set", "data.max_input_tokens=4096"
    )
    assert lines[0] == row["sample_id"]
    read = lines[lines.index("# what the frozen LM reads:") + 1]
    for segment in row["text_segments"]:
        assert segment.split(".")[0] in read  # every text node of G_t
    # the target after the input, not in it (cut to data.max_target_tokens of the test's
    # hand-built tokenizer, hence a prefix)
    target = lines[lines.index("# target (the loss is on these tokens only):") + 1].strip()
    assert len(target.split()) >= 3 and row["target_text"].startswith(target)
    assert target not in read
    k = cfg.model.tokens_per_image
    assert read.count(f"<{k} graph tokens: image ") == len(row["image_paths"])
    assert "graph tokens:" not in "\n".join(inspect("--set", "model.variant=text_only"))
    after = "\n".join(inspect())  # the smoke config's after_text: Nq tokens after the cue
    assert f"<{cfg.model.num_query_tokens} graph tokens: queries>" in after
    proc = subprocess.run([sys.executable, "jobs/inspect.py", "--help"], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0 and "--prep" in proc.stdout


def test_a_truncated_tfrecord_keeps_its_first_records_and_says_so(tmp_path, capsys):
    """The cut file's records before the cut become samples; the console names the file and
    the byte offset of the break (before: only a count in report.json was thought to remain)."""
    from g4mm.config import DataConfig
    from g4mm.data.synthetic import write_synthetic_docs
    from g4mm.pipeline.sources import wikiweb2m_items_to_table

    raw = tmp_path / "raw"
    write_synthetic_docs(raw, num_pages=8, image_size=16, seed=3, shards=1)
    shard = next(raw.glob("*.tfrecord.gz"))
    whole = wikiweb2m_items_to_table(
        pa.table({"path": [str(shard)], "name": [shard.name], "stripe": [0], "num_stripes": [1]}),
        DataConfig(dataset="wikiweb2m", input=str(raw), images=str(raw / "images")),
    ).num_rows
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) * 2 // 3])
    capsys.readouterr()
    cut = wikiweb2m_items_to_table(
        pa.table({"path": [str(shard)], "name": [shard.name], "stripe": [0], "num_stripes": [1]}),
        DataConfig(dataset="wikiweb2m", input=str(raw), images=str(raw / "images")),
    )
    assert 0 < cut.num_rows < whole
    out = capsys.readouterr().out
    assert f"[preprocess] WARNING {shard}" in out and "byte offset" in out
    assert f"(rest of {shard} skipped)" in out
