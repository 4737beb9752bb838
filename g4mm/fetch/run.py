"""Fetch the images a WikiWeb2M input names, on Ray Data, into what preprocessing reads.

Stages (one ``[fetch]`` line each, then progress lines with the rate and an ETA)::

    urls    (file, stripe) work items -> one row per image reference (g4mm.fetch.urls)
    unique  groupby("url").count(): distinct URLs, deduplicated by Ray Data's shuffle, not in
            the driver; --limit keeps the first N in URL order (a distributed sort)
    fetch   map_batches over the distinct URLs: each task runs ``threads`` downloaders
            (g4mm.fetch.download), every request waiting for its host's slot from one
            rate-limiter actor (g4mm.fetch.rate)
    write   the driver streams the results batch by batch (never all of them) into
            manifest.csv (url,path of every image now on disk), failures.csv
            (url,reason,detail,attempts) and fetch_report.json

Output directory::

    files/<2 hex>/<sha1(url)><ext>   the images (written only whole and decoded)
    manifest.csv                     url,path  -> jobs/preprocess.py --images <output>
    failures.csv                     url,reason,detail,attempts of this run's failures
    fetch_report.json                ok / failed {reason: n} / skipped, urls, seconds, ...

A rerun skips every URL whose file exists and fetches the rest: what failed, what was never
reached. Only one fetch may write into an output at a time (a lock file says so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from g4mm.fetch.download import FetchPolicy, FetchResult, fetch_url, remove_stale_parts

__all__ = ["MANIFEST_COLUMNS", "REPORT_NAME", "FetchOptions", "OutputBusyError", "fetch_images"]

REPORT_NAME = "fetch_report.json"
FAILURES_NAME = "failures.csv"
MANIFEST_COLUMNS = ("url", "path")
_LOCK_NAME = ".fetch.lock"
_RESULT_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string()),
        pa.field("path", pa.string()),
        pa.field("status", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("attempts", pa.int32()),
        pa.field("bytes", pa.int64()),
    ]
)
_CSV_OPTIONS = pacsv.WriteOptions(quoting_header="none")


class OutputBusyError(RuntimeError):
    """Another fetch holds the output directory's lock."""


@dataclasses.dataclass(frozen=True)
class FetchOptions:
    """What :func:`fetch_images` does besides each URL's :class:`FetchPolicy`.

    Attributes:
        concurrency: requests in flight at once, over the whole cluster.
        threads_per_task: downloader threads per Ray task (tasks = concurrency / threads).
        rate_per_host: requests per second per host, over the whole cluster (<= 0: no limit).
        splits: only records of these splits (``train`` / ``val`` / ``test``); None: all.
        limit: at most this many distinct URLs, the first in URL order; None: all.
        batch_size: URLs per Ray Data batch (one task call); None: twice the threads, so one
            slow URL holds back few others.
        progress_every_s: seconds between progress lines.
    """

    concurrency: int = 32
    threads_per_task: int = 8
    rate_per_host: float = 10.0
    splits: tuple[str, ...] | None = None
    limit: int | None = None
    batch_size: int | None = None
    progress_every_s: float = 10.0


# ------------------------------------------------------------------------------ in tasks

_SESSIONS = threading.local()
_POOLS: dict[int, ThreadPoolExecutor] = {}  # per worker process: threads (and their
# sessions, so their connections) live across batches


def _session() -> Any:
    """This thread's ``requests.Session`` (kept across batches: connections are reused)."""
    import requests

    if getattr(_SESSIONS, "session", None) is None:
        _SESSIONS.session = requests.Session()
    return _SESSIONS.session


def _fetch_batch(
    batch: pa.Table, output: str, policy: FetchPolicy, threads: int, limiter: Any
) -> pa.Table:
    """``map_batches`` function: distinct URLs -> ``_RESULT_SCHEMA`` rows."""
    import ray

    out = Path(output)
    if limiter is None:
        wait_turn = penalize = None
    else:

        def wait_turn(host: str) -> None:
            delay = ray.get(limiter.reserve.remote(host))
            if delay > 0:
                time.sleep(delay)

        def penalize(host: str, seconds: float) -> None:
            limiter.penalize.remote(host, seconds)

    def one(url: str) -> FetchResult:
        hooks = {} if limiter is None else {"wait_turn": wait_turn, "penalize": penalize}
        return fetch_url(_session(), url, out, policy, **hooks)

    urls = batch.column("url").to_pylist()
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads)
    results = list(pool.map(one, urls))
    rows = [dataclasses.asdict(r) for r in results]
    return pa.Table.from_pylist(rows, schema=_RESULT_SCHEMA)


# ------------------------------------------------------------------------------ in driver


@contextlib.contextmanager
def _exclusive(output: Path) -> Iterator[None]:
    """Hold ``output/.fetch.lock``; a second fetch into the same output is refused."""
    output.mkdir(parents=True, exist_ok=True)
    with open(output / _LOCK_NAME, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusyError(
                f"another fetch is writing into {output} (it holds {output / _LOCK_NAME}); "
                "wait for it or choose another --output"
            ) from None
        yield


class _Progress:
    """``[fetch] <stage>: ...`` lines; during the fetch, at most one per ``every_s``."""

    def __init__(self, every_s: float) -> None:
        self.start = time.perf_counter()
        self.every_s = every_s
        self.last_line = 0.0

    def stage(self, name: str, message: str) -> None:
        print(f"[fetch] {name}: {message} (+{time.perf_counter() - self.start:.1f}s)", flush=True)

    def fetching(self, done: int, total: int, counts: Counter, fetch_start: float) -> None:
        now = time.perf_counter()
        if done < total and now - self.last_line < self.every_s:
            return
        self.last_line = now
        seconds = max(now - fetch_start, 1e-9)
        rate = done / seconds
        eta = (total - done) / rate if rate > 0 else math.inf
        self.stage(
            "fetch",
            f"{done:,}/{total:,} URLs (ok {counts['ok']:,}, failed {counts['failed']:,}, "
            f"skipped {counts['skipped']:,}), {rate:.1f}/s, ETA {_duration(eta)}",
        )


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _problem_kind(batch: pa.Table) -> pa.Table:
    """``map_batches`` function: ``"bad_record: file:3"`` -> ``kind = "bad_record"``."""
    kinds = pc.extract_regex(batch.column("problem"), r"^(?P<kind>[a-z_]+)")
    return pa.table({"kind": pc.struct_field(kinds, [0])})


def _distinct_urls(input_path: str, options: FetchOptions, cpus: int) -> tuple[Any, dict]:
    """The materialized dataset of the URLs to fetch (column ``url``, distinct, ``--limit``
    applied) and what reading found: ``files``, ``references``, ``distinct`` (before the
    limit), ``selected`` (after it), ``problems`` {kind: n}."""
    import ray

    from g4mm.fetch.urls import urls_of_items
    from g4mm.pipeline.sources import record_items, tfrecord_files

    files = tfrecord_files(input_path)
    items = record_items(files, 4 * cpus, input_path)
    rows = (
        ray.data.from_items(items, override_num_blocks=len(items))
        .map_batches(
            urls_of_items,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"splits": list(options.splits) if options.splits else None},
        )
        .materialize()
    )
    bad = rows.filter(expr="problem != ''").map_batches(_problem_kind, batch_format="pyarrow")
    problems = {r["kind"]: r["count()"] for r in bad.groupby("kind").count().take_all()}
    refs = rows.filter(expr="url != ''")
    references = refs.count()
    partitions = max(1, min(4 * cpus, references // 100_000 + 1))
    unique = refs.select_columns(["url"]).groupby("url", num_partitions=partitions).count()
    unique = unique.select_columns(["url"]).materialize()
    distinct = unique.count()
    if options.limit is not None and options.limit < distinct:
        unique = unique.sort("url").limit(options.limit).materialize()
    info = {"files": len(files), "references": references, "distinct": distinct,
            "selected": unique.count(), "problems": dict(sorted(problems.items()))}  # fmt: skip
    return unique, info


def _keep_earlier(group: pa.Table, output: str) -> pa.Table:
    """``map_groups`` function over one URL's rows of (earlier manifest rows, ``selected`` =
    0) and (this run's URLs, 1): the earlier row, when this run did not select the URL and its
    file is still there; else nothing."""
    empty = pa.table({"url": pa.array([], pa.string()), "path": pa.array([], pa.string())})
    if pc.max(group.column("selected")).as_py() == 1:
        return empty
    row = group.slice(0, 1).select(["url", "path"])
    path = Path(output) / row.column("path")[0].as_py()
    return row if path.is_file() else empty


def _earlier_manifest_rows(old: Path, selected: Path, output: Path, partitions: int) -> Any:
    """The rows of the earlier ``manifest.csv`` to carry over: URLs this run did not select
    (another ``--splits`` / ``--limit``) whose files are still on disk. A Ray Data group-by of
    both lists: neither is held by the driver."""
    import ray
    from pyarrow import csv as pa_csv

    convert = pa_csv.ConvertOptions(column_types={"url": pa.string(), "path": pa.string()})
    earlier = ray.data.read_csv(str(old), convert_options=convert).map_batches(
        lambda t: t.append_column("selected", pa.array([0] * t.num_rows, pa.int8())),
        batch_format="pyarrow",
    )
    chosen = ray.data.read_parquet(str(selected)).map_batches(
        lambda t: pa.table(
            {
                "url": t.column("url"),
                "path": pa.array([""] * t.num_rows, pa.string()),
                "selected": pa.array([1] * t.num_rows, pa.int8()),
            }
        ),
        batch_format="pyarrow",
    )
    return (
        earlier.union(chosen)
        .groupby("url", num_partitions=partitions)
        .map_groups(_keep_earlier, batch_format="pyarrow", fn_kwargs={"output": str(output)})
    )


def _columns(names: list[str]) -> pa.Schema:
    return pa.schema([_RESULT_SCHEMA.field(name) for name in names])


def _writer(path: Path, schema: pa.Schema) -> pacsv.CSVWriter:
    return pacsv.CSVWriter(str(path), schema, write_options=_CSV_OPTIONS)


def fetch_images(
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    policy: FetchPolicy,
    options: FetchOptions = FetchOptions(),
    *,
    num_cpus: int | None = None,
) -> dict[str, Any]:
    """Fetch every image URL of the WikiWeb2M TFRecords at ``input_path`` into ``output``.

    Returns:
        The report (also ``output/fetch_report.json``): ``ok`` (written now), ``failed``
        {reason: n}, ``skipped`` (present from before), ``urls`` {files, references,
        distinct, problems}, ``manifest_rows``, ``bytes``, ``seconds``, ``urls_per_s``, and
        the settings used.
    """
    import ray

    from g4mm.data.images import MANIFEST_NAME
    from g4mm.pipeline.ray_runtime import cluster_cpus, init_ray

    out = Path(output).resolve()
    with _exclusive(out):
        progress = _Progress(options.progress_every_s)
        stale = remove_stale_parts(out)
        init_ray(num_cpus)
        cpus = cluster_cpus()
        removed = f"; removed {stale} partial files of a killed run" if stale else ""
        progress.stage("ray", f"connected, {cpus} CPUs{removed}")
        unique, urls = _distinct_urls(str(Path(input_path).resolve()), options, cpus)
        if urls["references"] == 0:
            which = f" of splits {', '.join(options.splits)}" if options.splits else ""
            problems = f" (problems: {urls['problems']})" if urls["problems"] else ""
            raise ValueError(f"{input_path}: no section_image_url in the records{which}"
                             f"{problems}; nothing to fetch")  # fmt: skip
        progress.stage(
            "urls",
            f"{urls['references']:,} image references in {urls['files']} files -> "
            f"{urls['distinct']:,} distinct URLs"
            + (f"; problems {urls['problems']}" if urls["problems"] else ""),
        )
        limiter = None
        if options.rate_per_host > 0:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            from g4mm.fetch.rate import HostRateLimiter

            here = ray.get_runtime_context().get_node_id()  # the head: never scaled away
            limiter = (
                ray.remote(HostRateLimiter)
                .options(num_cpus=0, max_restarts=-1, max_task_retries=-1,
                         scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True))
                .remote(options.rate_per_host)
            )  # fmt: skip
        threads = max(1, min(options.threads_per_task, options.concurrency))
        tasks = max(1, options.concurrency // threads)  # never more than --concurrency
        results = unique.select_columns(["url"]).map_batches(
            _fetch_batch,
            batch_size=options.batch_size or 2 * threads,
            batch_format="pyarrow",
            fn_kwargs={
                "output": str(out),
                "policy": policy,
                "threads": threads,
                "limiter": limiter,
            },
            compute=ray.data.TaskPoolStrategy(size=tasks),
            num_cpus=0.25,  # I/O bound: a CPU node runs 4 downloader tasks per core
        )
        counts: Counter = Counter()
        failed: Counter = Counter()
        written = 0
        fetch_start, done = time.perf_counter(), 0
        manifest_tmp = out / f".{MANIFEST_NAME}.tmp"
        failures_tmp = out / f".{FAILURES_NAME}.tmp"
        selected_tmp = out / ".selected.parquet"
        manifest_schema = _columns(list(MANIFEST_COLUMNS))
        failure_schema = _columns(["url", "reason", "detail", "attempts"])
        with (
            _writer(manifest_tmp, manifest_schema) as manifest,
            _writer(failures_tmp, failure_schema) as failures,
        ):
            with pq.ParquetWriter(str(selected_tmp), _columns(["url"])) as selected:
                for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
                    selected.write_table(batch.select(["url"]))
                    status = batch.column("status")
                    for value in pc.value_counts(status).to_pylist():
                        counts[value["values"]] += value["counts"]
                    present = batch.filter(pc.is_in(status, pa.array(["ok", "skipped"])))
                    manifest.write_table(present.select(list(MANIFEST_COLUMNS)))
                    bad = batch.filter(pc.equal(status, "failed"))
                    for value in pc.value_counts(bad.column("reason")).to_pylist():
                        failed[value["values"]] += value["counts"]
                    failures.write_table(bad.select(failure_schema.names))
                    written += pc.sum(batch.column("bytes")).as_py() or 0
                    done += batch.num_rows
                    progress.fetching(done, urls["selected"], counts, fetch_start)
            carried = 0
            if (out / MANIFEST_NAME).is_file():  # keep what earlier runs of other URLs fetched
                partitions = max(1, min(4 * cpus, urls["selected"] // 100_000 + 1))
                earlier = _earlier_manifest_rows(out / MANIFEST_NAME, selected_tmp, out, partitions)
                for batch in earlier.iter_batches(batch_format="pyarrow", batch_size=None):
                    manifest.write_table(batch.select(list(MANIFEST_COLUMNS)))
                    carried += batch.num_rows
        selected_tmp.unlink(missing_ok=True)
        os.replace(manifest_tmp, out / MANIFEST_NAME)  # the cache key reads its rows, in
        os.replace(failures_tmp, out / FAILURES_NAME)  # any order; failures.csv it ignores
        if limiter is not None:
            ray.kill(limiter)
        seconds = time.perf_counter() - progress.start
        report = {
            "ok": counts["ok"],
            "failed": dict(sorted(failed.items())),
            "skipped": counts["skipped"],
            "urls": urls,
            "manifest_rows": counts["ok"] + counts["skipped"] + carried,
            "manifest_carried": carried,
            "bytes": written,
            "seconds": round(seconds, 3),
            "urls_per_s": round(done / max(time.perf_counter() - fetch_start, 1e-9), 2),
            "settings": {
                "input": str(Path(input_path).resolve()),
                "output": str(out),
                "policy": dataclasses.asdict(policy),
                "options": dataclasses.asdict(options),
                "tasks": tasks,
                "threads_per_task": threads,
            },
        }
        (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        progress.stage(
            "write",
            f"ok {report['ok']:,}, failed {sum(failed.values()):,} {report['failed']}, "
            f"skipped {report['skipped']:,}; {out / MANIFEST_NAME}: "
            f"{report['manifest_rows']:,} rows ({carried:,} kept from earlier runs of other "
            "URLs)",
        )
        return report
