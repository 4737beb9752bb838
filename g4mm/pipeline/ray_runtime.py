"""Ray start-up for the pipeline: join a running cluster or start a local one, tune Ray Data.

Joining order: an already initialised Ray in this process; ``RAY_ADDRESS`` when set; a cluster
started on this machine with ``ray start`` (``address="auto"``); otherwise a local Ray with the
dashboard bound to 127.0.0.1. See ``/work/shared/RAY-NOTES.md`` for why resource reservation is
switched off (map stages scale 1 -> 2 CPUs only without it on small machines).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.data import DataContext

__all__ = ["cluster_cpus", "cluster_gpus", "configure_data_context", "init_ray", "ray_map"]


def configure_data_context(progress_bars: bool | None = None) -> DataContext:
    """Apply the pipeline's Ray Data settings to the current :class:`DataContext`.

    Args:
        progress_bars: force progress bars on/off; ``None``: on only under ``G4MM_LOG=debug``
            (:mod:`g4mm.console`) and never with ``RAY_DATA_DISABLE_PROGRESS_BARS=1``.
    """
    from g4mm.console import verbose

    ctx = DataContext.get_current()
    ctx.op_resource_reservation_enabled = False
    if progress_bars is None:
        progress_bars = verbose() and os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS") != "1"
    ctx.enable_progress_bars = progress_bars
    from ray.util.debug import log_once

    if not progress_bars:
        # Ray Data then warns once per process that bars are off, "to enable, set ..."; they
        # are off on purpose, so mark that warning as given
        log_once("ray_data_progress_manager_disabled")
    if not verbose():
        # "The Ray cluster currently does not have any available CPUs. The Dataset job will
        # hang ...": Ray Data checks the free CPUs at the instant a dataset starts, which on a
        # 2-CPU machine is often while the previous stage's tasks are still releasing theirs;
        # it did not hang in any run (Train workers reserve train.cpus_per_worker = 0.5, which
        # is what keeps Ray Data fed). Shown under G4MM_LOG=debug.
        log_once("cpu_warning")
        _quiet_ray_data_console()
    ctx.print_on_execution_start = False
    return ctx


def _quiet_ray_data_console() -> None:
    """Ray Data's console handler from INFO to WARNING: it prints INFO lines for every dataset
    a run executes ("Dataset ... execution finished in 0.10 seconds", "Data sink Parquet
    finished. 161 rows ..."): a dozen per preprocess, which the ``[preprocess]`` lines already
    summarise, and one per epoch from each Train run's split coordinator. Its session log file
    (``logs/ray-data/``) keeps everything.

    Here (``import ray.data`` has set up the handlers already) the handler's level is lowered;
    processes Ray starts later read ``RAY_DATA_LOGGING_CONFIG``, Ray Data's own setting, which
    points at Ray's default config with only the console's level changed."""
    import logging

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler":  # the console, not the session file
            handler.setLevel(logging.WARNING)
    if "RAY_DATA_LOGGING_CONFIG" not in os.environ:
        os.environ["RAY_DATA_LOGGING_CONFIG"] = str(_quiet_ray_data_logging_file())


def _quiet_ray_data_logging_file() -> Path:
    """Ray Data's default logging config, console at WARNING, as a YAML file (written once
    per content into the temp dir)."""
    import copy
    import hashlib
    import tempfile

    import yaml
    from ray.data._internal.logging import DEFAULT_CONFIG

    config = copy.deepcopy(DEFAULT_CONFIG)
    config["handlers"]["console"]["level"] = "WARNING"
    text = yaml.safe_dump(config)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"g4mm-ray-data-logging-{digest}.yaml"
    if not path.is_file():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def _running_local_cluster() -> bool:
    """True when ``ray start`` left a cluster address file on this machine."""
    try:
        from ray._private.utils import get_ray_address_file  # private API

        return os.path.exists(get_ray_address_file(None))
    except Exception:  # pragma: no cover - private API moved
        return False


def init_ray(num_cpus: int | None = None, *, progress_bars: bool | None = None) -> None:
    """Connect to Ray (idempotent) and configure Ray Data.

    Args:
        num_cpus: logical CPUs of a *locally started* Ray (ignored when joining a cluster).
        progress_bars: see :func:`configure_data_context`.
    """
    from g4mm.console import verbose

    if not ray.is_initialized():
        if not verbose():  # before the workers start: they inherit the setting
            _quiet_ray_data_console()
        address = os.environ.get("RAY_ADDRESS")
        if address == "local":  # Ray's spelling of "start a new local one"
            ray.init(address="local", num_cpus=num_cpus, **_local_start())
        elif address:
            ray.init(address=address, log_to_driver=True)
        elif _running_local_cluster():
            try:
                ray.init(address="auto", log_to_driver=True)
            except ConnectionError:  # stale address file: start our own
                ray.init(num_cpus=num_cpus, **_local_start())
        else:
            ray.init(num_cpus=num_cpus, **_local_start())
    configure_data_context(progress_bars)


def _local_start() -> dict[str, Any]:
    """``ray.init`` arguments of a Ray started here: the dashboard on loopback."""
    return {"dashboard_host": "127.0.0.1"}


def cluster_cpus() -> int:
    """Logical CPUs of the connected cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> int:
    """GPUs of the connected cluster (0 when none)."""
    return int(ray.cluster_resources().get("GPU", 0))


def _apply(fn: Callable[[Any], Any], job: Any) -> Any:
    return fn(job)


def ray_map(fn: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
    """``[fn(job) for job in jobs]`` as one Ray task per job (one CPU each), results in order.
    ``fn`` may be any picklable callable (e.g. a ``functools.partial``)."""
    remote = ray.remote(num_cpus=1)(_apply)
    return ray.get([remote.remote(fn, job) for job in jobs])
