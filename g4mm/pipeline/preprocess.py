"""Preprocess + embed with Ray Data, cached by content hash.

Stages (each prints one progress line with counts and elapsed seconds)::

    raw      synthetic sources only: generate raw files under output_dir/raw/<dataset> (docs:
             pages and images in Ray tasks, chunks of consecutive pages)
    read     WikiWeb2M: (file, stripe) work items over blocks -> one SourceGraph per record ->
             sample rows; MM-GRAPH / parquet: the graph read once in one task, its target nodes
             spread over blocks for sample building
    samples  parquet shards per split: <key>/samples/<split>/
    backbones  tiny backbones built from the corpus when missing (g4mm.data.corpus)
    embed    distinct texts / images (Ray Data: per batch, then groupby; never in the driver)
             -> frozen encoders in an actor pool (GPU when present) -> <key>/features/
             {text,image}/
    commit   report.json + DONE, then the build directory is renamed to <key>

A rerun with the same key prints ``cache hit: <dir>`` and returns the stored report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from g4mm.config import DataConfig, ExperimentConfig
from g4mm.data.prepared import CLASSES
from g4mm.pipeline import sources
from g4mm.pipeline.cache import (
    cache_key,
    commit_dir,
    encoder_fingerprint,
    is_done,
    new_tmp_dir,
    source_fingerprint,
    stale_tiny_backbones,
    tiny_recipes,
)
from g4mm.pipeline.embed import ImageEmbedder, TextEmbedder
from g4mm.pipeline.ray_runtime import cluster_cpus, cluster_gpus, init_ray, ray_map

__all__ = ["REPORT_NAME", "run_preprocess"]

REPORT_NAME = "report.json"
_EMBED_BATCH = 64
_SYNTHETIC_READER = {"synthetic-docs": "wikiweb2m", "synthetic-products": "mmgraph"}
#: In-context copy documents mixed into the tiny LM's pretraining (synthetic datasets).
COPY_DOCUMENTS = 6_000


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB: Linux's ``VmHWM`` (the high-water
    mark of this program's own memory; ``ru_maxrss`` would also hold the peak of the process
    it was forked from before ``exec``, e.g. a 600 MB parent), else ``ru_maxrss``."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _Progress:
    """Prints ``[preprocess] <stage>: <message> (+<elapsed>s)`` lines and keeps stage timings."""

    def __init__(self, start: float) -> None:
        self.start = self.last = start
        self.stages: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}  # the driver's peak RSS so far, at each stage's end

    def __call__(self, stage: str, message: str) -> None:
        now = time.perf_counter()
        self.peak_mb[stage] = _peak_rss_mb()
        self.stages[stage] = round(self.stages.get(stage, 0.0) + now - self.last, 3)
        self.last = now
        print(f"[preprocess] {stage}: {message} (+{now - self.start:.1f}s)", flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


# ----------------------------------------------------------------------------------- raw


def _ensure_raw(cfg: ExperimentConfig, output_dir: Path) -> DataConfig:
    """Generate a synthetic source's raw files (reused when their parameters match) and return
    the DataConfig that reads them through the real reader."""
    from g4mm.data import synthetic

    d = cfg.data
    params = {"dataset": d.dataset, "image_size": d.image_size, "seed": d.seed,
              "generator": synthetic.GENERATOR_VERSION}  # fmt: skip
    if d.dataset == "synthetic-docs":
        params["num_pages"] = d.num_pages
    else:
        params["num_products"] = d.num_products
    raw = output_dir / "raw" / d.dataset
    marker = raw / "params.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == params):
        tmp = new_tmp_dir(output_dir)
        if d.dataset == "synthetic-docs":
            synthetic.write_synthetic_docs(
                tmp, num_pages=d.num_pages, image_size=d.image_size, seed=d.seed,
                chunks=4 * cluster_cpus(), map_chunks=ray_map,
            )  # fmt: skip
        else:
            synthetic.write_synthetic_products(
                tmp, num_products=d.num_products, image_size=d.image_size, seed=d.seed
            )
        (tmp / "params.json").write_text(json.dumps(params))
        if raw.exists():
            shutil.rmtree(raw)
        raw.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(raw)
    images = str(raw / "images") if d.dataset == "synthetic-docs" else None
    return dataclasses.replace(
        d, dataset=_SYNTHETIC_READER[d.dataset], input=str(raw), images=images
    )


# ---------------------------------------------------------------------------------- read


def _read_and_build(cfg: ExperimentConfig, data_cfg: DataConfig) -> tuple[ray.data.Dataset, dict]:
    """Sample rows (+ bookkeeping columns), materialized, and the merged read stats."""
    from g4mm.data.records import ReadStats  # light (no torch), but workers need not import it

    num_blocks = max(1, cfg.data.num_blocks)
    classes = None
    if data_cfg.dataset == "wikiweb2m":
        assert data_cfg.input is not None
        files = sources.tfrecord_files(data_cfg.input)
        items = sources.record_items(files, num_blocks, data_cfg.input)
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            sources.wikiweb2m_items_to_table,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"data_cfg": data_cfg},
        )
        base = ReadStats()
    else:
        read = ray.remote(sources.read_single_graph).options(num_returns=4)
        local_cfg = dataclasses.replace(cfg, data=data_cfg)
        refs = read.remote(local_cfg)
        # all four at once: a reader's error (bad input) is raised once; a ref left unread
        # would be printed again by Ray as an "unhandled error" with its traceback
        src_ref = refs[0]
        try:
            stats_dict, n_targets, classes = ray.get(list(refs[1:]))
        except Exception:
            with contextlib.suppress(Exception):
                ray.get(list(refs))
            raise
        base = ReadStats.from_dict(stats_dict)
        if n_targets == 0:
            ds = ray.data.from_arrow(
                sources.rows_table(
                    [], {**base.to_dict(), "targets": 0, "build_skipped": 0, "samples_by_split": {}}
                )
            )
            base = ReadStats()
        else:
            ds = ray.data.range(n_targets, override_num_blocks=min(num_blocks, n_targets))
            ds = ds.map_batches(
                _targets_batch,
                batch_format="numpy",
                fn_kwargs={"src_ref": [src_ref], "data_cfg": data_cfg},
            )
    mat = ds.materialize()
    stats = base
    extra = {"targets": 0, "build_skipped": 0, "samples": Counter(), "classes": classes}
    # the stats cells (one per work item) are picked out in the workers, so the driver never
    # fetches a block of sample rows (blocks grow with the data). Measured: this did not change
    # the driver's peak, which still grows in this stage (250 -> 426 MB from 800 to 24,000
    # pages, bench/RESULTS.md); its cause is still to be found
    cells = mat.map_batches(_stats_cells, batch_format="pyarrow", batch_size=None)
    for batch in cells.iter_batches(batch_format="pyarrow", batch_size=None):
        for cell in batch.column("_stats").to_pylist():
            if cell is None:
                continue
            info = json.loads(cell)
            stats.merge(info)
            extra["targets"] += info["targets"]
            extra["build_skipped"] += info["build_skipped"]
            extra["samples"].update(info["samples_by_split"])
    return mat, {**stats.to_dict(), **extra}


def _stats_cells(batch: pa.Table) -> pa.Table:
    """``map_batches`` function: the non-null ``_stats`` cells of a block of rows."""
    column = batch.column("_stats")
    return pa.table({"_stats": column}).filter(pc.is_valid(column))


def _targets_batch(batch: dict, src_ref: list, data_cfg: DataConfig) -> pa.Table:
    """Target indices -> sample rows of the shared SourceGraph (fetched once per worker)."""
    ref = src_ref[0]
    cached = _GRAPH_CACHE.get(ref.hex())
    if cached is None:
        _GRAPH_CACHE.clear()
        cached = _GRAPH_CACHE[ref.hex()] = ray.get(ref)
    return sources.targets_to_table(batch, cached, data_cfg)


_GRAPH_CACHE: dict[str, Any] = {}


# -------------------------------------------------------------------------------- samples


def _only_samples(batch: pa.Table) -> pa.Table:
    return batch.filter(batch.column("_is_sample")).drop_columns(list(sources.BOOKKEEPING))


def _split_filter(batch: pa.Table, split: str) -> pa.Table:
    return batch.filter(pc.equal(batch.column("split"), split))


def _write_samples(rows: ray.data.Dataset, splits: list[str], out: Path) -> None:
    samples = rows.map_batches(_only_samples, batch_format="pyarrow", batch_size=None)
    for split in splits:
        samples.map_batches(
            _split_filter, batch_format="pyarrow", batch_size=None, fn_kwargs={"split": split}
        ).write_parquet(str(out / "samples" / split))


_VALUE_COLUMNS = {"text": "text_nodes", "image": "image_paths"}


def _values_of_batch(batch: pa.Table) -> pa.Table:
    """``map_batches`` function: the distinct non-empty node texts and image paths of the
    batch's samples, as rows ``(kind, value)`` (deduplicated per batch first: the shuffle
    then moves each value about once per block, not once per reference)."""
    batch = batch.filter(batch.column("_is_sample"))
    kinds, values = [], []
    for kind, column in _VALUE_COLUMNS.items():
        flat = pc.drop_null(pc.list_flatten(batch.column(column)))
        unique = pc.unique(flat.filter(pc.not_equal(flat, ""))).cast(pa.string())
        kinds.append(pa.array([kind] * len(unique), pa.string()))
        values.append(unique)
    return pa.table({"kind": pa.concat_arrays(kinds), "value": pa.concat_arrays(values)})


def _distinct_values(
    rows: ray.data.Dataset, blocks: int
) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """Distinct non-empty node texts and image paths of the sample rows, each a materialized
    one-column (``value``) dataset in ``blocks`` blocks: deduplicated by Ray Data (per batch,
    then one ``groupby`` shuffle of both across the cluster), never gathered in the driver.

    The shuffle gets one partition per 50,000 values (at most ``blocks``): Ray's default of
    200 cost 5 s on 20,000 values here, 2 partitions 0.3 s. The results are split into
    ``blocks`` blocks here, before the embed stage: its two actor pools hold every CPU of a
    small machine, and a ``repartition`` inside it would wait for a CPU forever (seen on 2)."""
    columns = [*_VALUE_COLUMNS.values(), "_is_sample"]
    per_batch = (
        rows.select_columns(columns)
        .map_batches(_values_of_batch, batch_format="pyarrow", batch_size=None)
        .materialize()
    )
    partitions = max(1, min(blocks, per_batch.count() // 50_000 + 1))
    grouped = per_batch.groupby(["kind", "value"], num_partitions=partitions).count()
    grouped = grouped.materialize()
    texts, images = (
        grouped.filter(expr=f"kind == '{kind}'").select_columns(["value"]).repartition(blocks)
        .materialize()
        for kind in _VALUE_COLUMNS
    )  # fmt: skip
    return texts, images


def _corpus(rows: ray.data.Dataset) -> list[str]:
    """The tiny tokenizer / LM's training corpus: the TRAIN samples' node texts, prompts and
    targets, each text once. Nothing of a val or test sample reaches the frozen LM: not its
    target, and not its neighbours' texts, which (a section's full text as another section's
    neighbour) can hold another held-out sample's answer."""
    corpus: dict[str, None] = {}  # ordered set
    columns = ["text_nodes", "prompt", "target_text", "_is_sample", "split"]
    for batch in rows.select_columns(columns).iter_batches(batch_format="pyarrow"):
        batch = batch.filter(batch.column("_is_sample"))
        batch = batch.filter(pc.equal(batch.column("split"), "train"))
        texts = pc.list_flatten(batch.column("text_nodes")).to_pylist()
        for column in ("prompt", "target_text"):
            texts.extend(batch.column(column).to_pylist())
        corpus.update(dict.fromkeys(t for t in texts if t))
    return list(corpus)


def _build_backbones(
    cfg: ExperimentConfig, data_cfg: DataConfig, rows: ray.data.Dataset, source: dict[str, Any]
) -> dict[str, str]:
    """Build the missing or stale tiny backbones (:func:`tiny_recipes`): from the generated
    train pages for synthetic sources, else from the train samples (:func:`_corpus`)."""
    from g4mm.data.corpus import ensure_tiny_backbones

    recipes = tiny_recipes(cfg, source)
    if cfg.data.dataset in _SYNTHETIC_READER:
        from g4mm.data.synthetic import corpus_texts, lm_copy_documents

        assert data_cfg.input is not None
        corpus = list(corpus_texts(data_cfg.input, splits=("train",)))
        copies = lm_copy_documents(cfg.data.dataset, COPY_DOCUMENTS, cfg.data.seed)
        return ensure_tiny_backbones(cfg, corpus, copy_docs=copies, recipes=recipes)
    return ensure_tiny_backbones(cfg, _corpus(rows), recipes=recipes)


def _copy_note(cfg: ExperimentConfig) -> str:
    """``"; tiny LM held-out copy accuracy 1.00"`` from the tiny LM's stamp, or ``""``."""
    from g4mm.model.backbones import BACKBONES, read_stamp

    if cfg.model.lm != "tiny":
        return ""
    stamp = read_stamp(Path(cfg.data.artifact_dir) / BACKBONES[("lm", "tiny")].local_subdir)
    accuracy = (stamp or {}).get("held_out_copy_accuracy")
    return "" if accuracy is None else f"; tiny LM held-out copy accuracy {accuracy:.2f}"


# ---------------------------------------------------------------------------------- embed


def _embed(
    values: ray.data.Dataset, actor_cls: type, ctor: dict[str, Any], out: Path, cpus: int, gpus: int
) -> int:
    """Run ``actor_cls`` over the ``value`` column of ``values`` (materialized) in an actor
    pool; write FEATURE_SCHEMA parquet."""
    out.mkdir(parents=True, exist_ok=True)
    count = values.count()
    if count == 0:
        return 0
    batches = -(-count // _EMBED_BATCH)
    if gpus > 0:  # one actor per GPU, half a GPU each: the text and image pools share them
        pool, resources = ray.data.ActorPoolStrategy(size=gpus), {"num_gpus": 0.5}
    else:
        # CPU: each actor one CPU; the two pools start at half the CPUs each and grow into
        # what the other leaves. A fixed half left the text pool of a 135 M-parameter LM on
        # 1 of 2 CPUs for 10+ minutes after the tiny vision pool had finished in seconds.
        most = max(1, min(cpus, -(-batches // 4)))
        pool = ray.data.ActorPoolStrategy(min_size=max(1, min(most, cpus // 2)), max_size=most)
        resources = {"num_cpus": 1}
    feats = values.map_batches(
        actor_cls,
        fn_constructor_kwargs=ctor,
        batch_size=_EMBED_BATCH,
        batch_format="pyarrow",
        compute=pool,
        **resources,
    ).materialize()
    feats.write_parquet(str(out))
    return feats.count()


def _embed_stage(
    cfg: ExperimentConfig,
    texts: ray.data.Dataset,
    images: ray.data.Dataset,
    out: Path,
    cpus: int,
    gpus: int,
) -> tuple[int, int]:
    """Text and image features into ``out/text`` and ``out/image``; returns both row counts.

    The two actor pools run at once (one driver thread each), so one model's loading overlaps
    the other's work.
    """
    m, art = cfg.model, cfg.data.artifact_dir
    text_name = m.lm if m.text_encoder == "lm" else m.text_encoder
    text_ctor = {"name": text_name, "artifact_dir": art, "max_length": cfg.data.max_input_tokens}
    image_ctor = {"name": m.vision, "artifact_dir": art}
    with ThreadPoolExecutor(max_workers=2) as pool:
        text = pool.submit(_embed, texts, TextEmbedder, text_ctor, out / "text", cpus, gpus)
        image = pool.submit(_embed, images, ImageEmbedder, image_ctor, out / "image", cpus, gpus)
        return text.result(), image.result()


# --------------------------------------------------------------------------------- report


def _load_report(path: Path) -> dict[str, Any]:
    return json.loads((path / REPORT_NAME).read_text())


def _cache_hit(final: Path, start: float) -> dict[str, Any]:
    print(f"cache hit: {final}", flush=True)
    report = _load_report(final)
    report.update(
        cache_hit=True,
        stages_run=[],
        embedded={"text": 0, "image": 0},
        hit_seconds=round(time.perf_counter() - start, 3),
        output=str(final),
    )
    return report


def _absolute_paths(data_cfg: DataConfig) -> DataConfig:
    """``data_cfg`` with ``input`` and ``images`` made absolute here, on the driver: Ray
    workers run in other working directories, where a relative path means something else."""
    absolute = {
        name: str(Path(value).resolve())
        for name in ("input", "images")
        if (value := getattr(data_cfg, name))
    }
    return dataclasses.replace(data_cfg, **absolute)


def run_preprocess(
    cfg: ExperimentConfig, output_dir: str | Path, *, num_cpus: int | None = None
) -> dict[str, Any]:
    """Preprocess ``cfg.data`` and embed it with ``cfg.model``'s frozen encoders, cached.

    Args:
        cfg: the experiment config (``data`` section: source and subgraph sizes; ``model``:
            ``lm`` / ``text_encoder`` / ``vision`` backbones).
        output_dir: cache root; results land in ``output_dir/<cache_key>/``.
        num_cpus: CPUs of a locally started Ray (ignored when joining a cluster).

    Returns:
        The report (also ``<key>/report.json``): ``samples`` per split, ``targets``,
        ``images`` {ok, missing, corrupt}, ``skipped`` {reason: n}, ``features`` and
        ``embedded`` {text, image}, ``cache_key``, ``cache_hit``, ``seconds``,
        ``samples_per_s``, ``stages`` (seconds each), ``stages_run``, ``output``,
        ``driver_peak_mb`` (this process's peak resident memory, :func:`_peak_rss_mb`) and
        ``driver_peak_mb_by_stage`` (that peak as each stage ended).
    """
    start = time.perf_counter()
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = source_fingerprint(cfg)  # walks the input and images once per run
    key = cache_key(cfg, source)
    if key is not None and is_done(out / key):
        return _cache_hit(out / key, start)

    progress, stages_run = _Progress(start), []
    init_ray(num_cpus)
    progress("ray", f"connected, {cluster_cpus()} CPUs, {cluster_gpus()} GPUs")
    tmp = new_tmp_dir(out)
    try:
        data_cfg = _absolute_paths(cfg.data)
        if cfg.data.dataset in _SYNTHETIC_READER:
            data_cfg = _ensure_raw(cfg, out)
            progress("raw", f"{cfg.data.dataset} files in {data_cfg.input}")
            stages_run.append("raw")
        rows, info = _read_and_build(cfg, data_cfg)
        n_samples = sum(info["samples"].values())
        progress(
            "read",
            f"{info['targets']} targets -> {n_samples} samples, images {info['images']}, "
            f"skipped {info['skipped']}",
        )
        stages_run.append("read")
        splits = sorted(info["samples"])
        _write_samples(rows, splits, tmp)
        progress("samples", ", ".join(f"{s}={info['samples'][s]}" for s in splits) or "none")
        stages_run.append("samples")

        blocks = 4 * (cluster_gpus() or cluster_cpus())  # the embed stage's parallelism
        texts, images = _distinct_values(rows, blocks)
        if encoder_fingerprint(cfg) is None or stale_tiny_backbones(cfg, source):  # (re)build
            status = _build_backbones(cfg, data_cfg, rows, source)
            progress("backbones", f"tiny backbones {status} in {cfg.data.artifact_dir}"
                     f"{_copy_note(cfg)}")  # fmt: skip
            stages_run.append("backbones")
        key = cache_key(cfg, source)
        assert key is not None, "encoders still not resolvable after building backbones"
        if is_done(out / key):  # built by a concurrent run meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            return _cache_hit(out / key, start)

        cpus, gpus = cluster_cpus(), cluster_gpus()
        n_text, n_image = _embed_stage(cfg, texts, images, tmp / "features", cpus, gpus)
        progress(
            "embed",
            f"{n_text}/{texts.count()} texts, {n_image}/{images.count()} images "
            f"({f'GPU x{gpus}' if gpus else 'CPU'})",
        )
        stages_run.append("embed")

        seconds = progress.elapsed
        report = {
            "dataset": cfg.data.dataset,
            "cache_key": key,
            "cache_hit": False,
            "samples": dict(sorted(info["samples"].items())),
            "targets": info["targets"],
            "build_skipped": info["build_skipped"],
            "images": info["images"],
            "skipped": info["skipped"],
            "features": {"text": n_text, "image": n_image},
            "embedded": {"text": n_text, "image": n_image},
            "seconds": round(seconds, 3),
            "samples_per_s": round(n_samples / seconds, 2) if seconds > 0 else None,
            "num_cpus": cpus,
            "num_gpus": gpus,
            "driver_peak_mb": _peak_rss_mb(),
            "driver_peak_mb_by_stage": progress.peak_mb,
            "stages": progress.stages,
            "stages_run": stages_run,
        }
        final = out / key
        report["output"] = str(final)
        if info.get("classes") is not None:
            (tmp / CLASSES).write_text(json.dumps(info["classes"], indent=2) + "\n")
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        if cache_key(cfg, source) != key:  # an encoder changed under the embedding: never mislabel
            raise RuntimeError(
                f"the encoders in {cfg.data.artifact_dir}/backbones changed while this run "
                "embedded its features (a run of other data sharing this data.artifact_dir "
                "switched a tiny backbone): nothing was cached; rerun, or give concurrent runs "
                "of different data their own data.artifact_dir"
            )
        if not commit_dir(tmp, final):
            return _cache_hit(final, start)
        progress("commit", f"{final}")
        return report
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
