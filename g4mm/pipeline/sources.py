"""Work items and the per-item reading / sample building that Ray Data runs in its workers.

Ray-free on purpose (plain functions over plain values) so the logic is testable without a
cluster; :mod:`g4mm.pipeline.preprocess` wires these into ``map_batches``.

Every batch function returns a pyarrow table in :data:`g4mm.data.schema.SAMPLE_SCHEMA` plus two
bookkeeping columns: ``_is_sample`` (False for a stats-only row) and ``_stats`` (a JSON
:meth:`ReadStats.to_dict` plus ``targets`` / ``samples_by_split``, on one row per work item).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from g4mm.config import DataConfig, ExperimentConfig

if TYPE_CHECKING:  # imported (with torch) by the readers only: see _read_stats()
    from g4mm.data.records import ReadStats, SourceGraph

__all__ = [
    "BOOKKEEPING",
    "build_rows",
    "output_schema",
    "read_single_graph",
    "record_items",
    "rows_table",
    "source_name",
    "targets_to_table",
    "tfrecord_files",
    "wikiweb2m_items_to_table",
]

BOOKKEEPING = ("_is_sample", "_stats")
_TFRECORD_SUFFIXES = (".tfrecord", ".tfrecord.gz", ".tfrecords", ".tfrecords.gz", ".gz")


def _read_stats() -> ReadStats:
    """A fresh ReadStats, imported here, in the readers (the readers themselves pull in torch
    and torch_geometric), not by every Ray worker that merely unpickles a function of this
    module."""
    from g4mm.data.records import ReadStats

    return ReadStats()


def _sample_schema() -> pa.Schema:
    from g4mm.data.schema import SAMPLE_SCHEMA

    return SAMPLE_SCHEMA


def output_schema() -> pa.Schema:
    """SAMPLE_SCHEMA + the bookkeeping columns."""
    return (
        _sample_schema()
        .append(pa.field("_is_sample", pa.bool_()))
        .append(pa.field("_stats", pa.string()))
    )


def _blank_value(f: pa.Field) -> Any:
    if f.nullable:
        return None
    t = f.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return []
    if pa.types.is_boolean(t):
        return False
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return ""
    return 0


def rows_table(rows: list[dict[str, Any]], stats: dict[str, Any]) -> pa.Table:
    """Rows + one ``_stats`` cell (on the first row, or on a stats-only row when none)."""
    schema = output_schema()
    rows = [{**r, "_is_sample": True, "_stats": None} for r in rows]
    if rows:
        rows[0]["_stats"] = json.dumps(stats)
    else:
        blank = {f.name: _blank_value(f) for f in _sample_schema()}
        rows = [{**blank, "_is_sample": False, "_stats": json.dumps(stats)}]
    return pa.Table.from_pylist(rows, schema=schema)


def _call_build_samples(src: SourceGraph, data_cfg: DataConfig, stats: ReadStats) -> list[dict]:
    """``build_samples(src, cfg[, stats])`` -- passes the stats when the builder accepts them."""
    from g4mm.data.samples import build_samples

    params = inspect.signature(build_samples).parameters
    if "stats" in params:
        return build_samples(src, data_cfg, stats=stats)
    rows = build_samples(src, data_cfg)
    if len(rows) < len(src.targets):
        stats.skip("empty_text", len(src.targets) - len(rows))
    return rows


def build_rows(src: SourceGraph, data_cfg: DataConfig, stats: ReadStats) -> tuple[list, dict]:
    """Sample rows of ``src`` and this unit's stats dict: ``stats.to_dict()`` plus ``targets``
    (targets the reader produced), ``build_skipped`` (of those, skipped by the sample builder)
    and ``samples_by_split``; so ``targets == sum(samples_by_split) + build_skipped``."""
    before = sum(stats.skipped.values())
    rows = _call_build_samples(src, data_cfg, stats)
    info = stats.to_dict()
    info["targets"] = len(src.targets)
    info["build_skipped"] = sum(stats.skipped.values()) - before
    info["samples_by_split"] = dict(Counter(r["split"] for r in rows))
    return rows, info


# ------------------------------------------------------------------------------ WikiWeb2M


def tfrecord_files(input_path: str | os.PathLike[str]) -> list[str]:
    """The TFRecord files of a WikiWeb2M input (a file or a directory, searched recursively),
    as absolute paths under the resolved input (so :func:`source_name` can name them relative
    to it, symlinked files included)."""
    root = Path(input_path)
    if root.is_file():
        return [str(root.resolve())]
    if not root.is_dir():
        raise FileNotFoundError(f"WikiWeb2M input not found: {root}")
    resolved = root.resolve()
    files = sorted(
        str(resolved / p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and (p.name.endswith(_TFRECORD_SUFFIXES) or ".tfrecord" in p.name)
    )
    if not files:
        raise FileNotFoundError(f"no TFRecord files (*.tfrecord[.gz]) under {root}")
    return files


def source_name(path: str | os.PathLike[str], input_path: str | os.PathLike[str]) -> str:
    """How a TFRecord file of :func:`tfrecord_files` is named in sample ids and messages: its
    path relative to the input directory, in posix form (``"train/x.tfrecord.gz"``, so equal
    file names in different subdirectories give different ids and shuffle seeds), or its file
    name when the input is the file itself.

    Raises:
        ValueError: ``path`` is not under ``input_path``.
    """
    root = Path(input_path).resolve()
    if not root.is_dir():
        return Path(path).name
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"TFRecord file {path} is not under the input directory {root}") from None


def record_items(
    files: list[str], num_blocks: int, input_path: str | os.PathLike[str]
) -> list[dict[str, Any]]:
    """Work items ``{"path", "name", "stripe", "num_stripes"}``: each file read by
    ``num_stripes`` tasks, task ``stripe`` parsing records ``i % num_stripes == stripe``
    (framing is cheap, parsing + image checks are not), so few large files still spread over
    ``num_blocks``. ``name`` (:func:`source_name`) is resolved here, on the driver, where a
    relative ``input_path`` means what the user meant."""
    stripes = max(1, -(-num_blocks // max(1, len(files))))
    return [
        {"path": f, "name": source_name(f, input_path), "stripe": s, "num_stripes": stripes}
        for f in files
        for s in range(stripes)
    ]


def wikiweb2m_items_to_table(batch: pa.Table, data_cfg: DataConfig) -> pa.Table:
    """``map_batches`` function: work items -> sample rows (+ one stats cell per item).

    Records are named ``"<file>:<record index>"`` with ``<file>`` from :func:`source_name`
    (the sample ids are ``"<file>:<record index>#<node id>"``). A malformed record is a
    counted, logged skip (see :func:`~g4mm.data.wikiweb2m.read_wikiweb2m_record`); broken
    framing skips the rest of the file (``"corrupt_tfrecord_file"``, counted once per file);
    any other ``ValueError`` is re-raised naming the file and the record.
    """
    from g4mm.data.images import load_manifest
    from g4mm.data.tfrecord import TFRecordError, iter_tfrecords
    from g4mm.data.wikiweb2m import read_wikiweb2m_record

    images_dir = data_cfg.images or (
        data_cfg.input if data_cfg.input and Path(data_cfg.input).is_dir() else None
    )
    manifest = load_manifest(images_dir)
    image_cache: dict[Path, str] = {}
    tables = []
    for item in batch.to_pylist():
        path, stripe, num_stripes = item["path"], item["stripe"], item["num_stripes"]
        stats, rows, targets, build_skipped = _read_stats(), [], 0, 0
        by_split: Counter[str] = Counter()
        name = item["name"]
        try:
            for i, record in enumerate(iter_tfrecords(path)):
                if i % num_stripes != stripe:
                    continue
                try:  # per-record data problems are counted skips inside the reader
                    src = read_wikiweb2m_record(
                        record, f"{name}:{i}", images_dir, manifest, stats,
                        image_cache=image_cache,
                        allow_outside_images=data_cfg.allow_outside_images,
                    )  # fmt: skip
                    if src is None:
                        continue
                    part, info = build_rows(src, data_cfg, _read_stats())
                except ValueError as err:  # anything else: fail, naming the file and record
                    raise ValueError(f"{path}: record {i}: {err}") from err
                stats.merge(info)
                targets += info["targets"]
                build_skipped += info["build_skipped"]
                by_split.update(info["samples_by_split"])
                rows.extend(part)
        except TFRecordError as err:  # framing broken: the rest of the file is unreadable
            if stripe == 0:
                stats.skip("corrupt_tfrecord_file")
            print(f"[preprocess] WARNING {err} (rest of {path} skipped)", flush=True)
        info = stats.to_dict()
        info["targets"] = targets
        info["build_skipped"] = build_skipped
        info["samples_by_split"] = dict(by_split)
        tables.append(rows_table(rows, info))
    return pa.concat_tables(tables)


# ------------------------------------------------------------------------- single graphs


def read_single_graph(cfg: ExperimentConfig) -> tuple[SourceGraph, dict, int, dict]:
    """Read an MM-GRAPH or parquet-layout directory (``cfg.data.input``) into one SourceGraph.

    Returns ``(graph, stats dict, number of targets, classes)``; ``classes`` is
    ``{"class_names": [...] | None, "zero_shot_classes": [...] | None, "input": dir}``, what
    the source's ``class_names.json`` / ``zero_shot_classes.json`` say (None: no such file).
    """
    stats = _read_stats()
    if cfg.data.input is None:
        raise ValueError(f"data.input is required for dataset {cfg.data.dataset!r}")
    if cfg.data.dataset == "parquet":
        from g4mm.data.parquet_source import read_parquet_graph

        src = read_parquet_graph(
            cfg.data.input, stats, allow_outside_images=cfg.data.allow_outside_images
        )
    else:
        from g4mm.data.mmgraph import read_mmgraph

        src = read_mmgraph(cfg.data.input, stats)
    classes = {
        "class_names": src.class_names,
        "zero_shot_classes": src.zero_shot_classes,
        "input": str(cfg.data.input),
    }
    return src, stats.to_dict(), len(src.targets), classes


def targets_to_table(batch: dict[str, Any], src: SourceGraph, data_cfg: DataConfig) -> pa.Table:
    """``map_batches`` function over target indices of one shared SourceGraph."""
    idx = [int(i) for i in batch["id"]]
    part = dataclasses.replace(src, targets=[src.targets[i] for i in idx])
    rows, info = build_rows(part, data_cfg, _read_stats())
    return rows_table(rows, info)
