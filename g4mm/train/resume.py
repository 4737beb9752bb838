"""Continuing a stopped run (``jobs/train.py --resume RUN_DIR``): its config, its Ray Train
run, and a clean stop on Ctrl-C / SIGTERM.

A run directory holds what resuming needs:

- ``config.yaml``: the run's own config. A resume starts from it; ``--set`` may change only
  what leaves the trained function the same (:data:`RESUMABLE_FIELDS`: the evaluation, the
  step budget, where and how often it reports, the resources); anything else is refused naming
  the fields, since a checkpoint of one model cannot continue as another.
- ``ray_run.json`` (Ray Train runs): the Ray run's ``name`` and ``storage_path``. Ray Train V2
  continues a run started with the same ``RunConfig(name, storage_path)`` from its latest
  checkpoint (the controller restores its checkpoint manager from the storage). A lost head
  node loses nothing when ``train.storage_path`` is shared storage (``s3://``, NFS).
- ``checkpoints/last`` and ``checkpoints/best`` (in-process runs): the latest and the best state.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from g4mm.config import ConfigError, ExperimentConfig, load_config

__all__ = [
    "RAY_RUN_FILE",
    "RESUMABLE_FIELDS",
    "last_checkpoint_step",
    "load_ray_run",
    "resume_command",
    "resume_config",
    "resumed_seed",
    "save_ray_run",
    "stop_on_sigterm",
]

RAY_RUN_FILE = "ray_run.json"

#: Fields a resume may change (``section.key``, or ``section.*`` for a whole section): they
#: decide how long the run goes on, how and where it is evaluated and reported, and on what
#: resources; none changes the function being trained or the data it sees. ``tune.metric`` and
#: ``tune.mode`` are not among them: the checkpoints kept so far were ranked by them. A longer
#: ``train.max_steps`` stretches the rest of the cosine schedule from where it is (the rate
#: steps up once at the resume), as the schedule is a function of the budget.
RESUMABLE_FIELDS: tuple[str, ...] = (
    "eval.*",
    "train.max_steps",
    "train.eval_every",
    "train.max_failures",
    "train.num_to_keep",
    "train.cpus_per_worker",
    "train.use_gpu",
    "train.output_dir",
    "train.tracking",
    "train.tracking_uri",
)


def resumed_seed(seed: int, restart_step: int, rank: int) -> int:
    """This rank's seed for the data order (and, after a restart, torch's RNG):
    ``seed + rank`` at the start, a different stream for each step a run resumes from."""
    return seed + rank + 1_000_003 * restart_step


def _resumable(dotted: str) -> bool:
    section = dotted.split(".", 1)[0]
    return dotted in RESUMABLE_FIELDS or f"{section}.*" in RESUMABLE_FIELDS


def _flat(cfg: ExperimentConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_flat_dict().items() if k != "name"}


def resume_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The config of the run in ``run_dir`` with ``overrides`` applied.

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``config.yaml`` (not a run directory).
        ConfigError: an override changes a field outside :data:`RESUMABLE_FIELDS` (all such
            fields named, with both values), or is malformed.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"--resume {run_dir}: no config.yaml there; pass the run directory that "
            "jobs/train.py printed as 'run directory: ...'"
        )
    saved = load_config(path)
    if not overrides:
        return saved
    changed = load_config(path, overrides)
    before, after = _flat(saved), _flat(changed)
    refused = [
        f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k) and not _resumable(k)
    ]
    if refused:
        raise ConfigError(
            f"--resume {run_dir} continues that run's model and data; these --set changes "
            f"would make it another run: {'; '.join(refused)} (a resume may change only "
            f"{', '.join(RESUMABLE_FIELDS)}; start a new run for the rest)"
        )
    changed.name = saved.name
    return changed


def save_ray_run(run_dir: Path, name: str, storage_path: str) -> None:
    """Record the Ray Train run of ``run_dir`` (before it starts: a killed driver leaves it)."""
    (run_dir / RAY_RUN_FILE).write_text(
        json.dumps({"name": name, "storage_path": storage_path}, indent=2) + "\n"
    )


def load_ray_run(run_dir: Path) -> Mapping[str, str] | None:
    """``{"name", "storage_path"}`` of the run's Ray Train run, or None if it never started one
    (an in-process run, or a driver stopped before training)."""
    path = run_dir / RAY_RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return {"name": str(record["name"]), "storage_path": str(record["storage_path"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a Ray run record ({exc})") from exc


def last_checkpoint_step(run_dir: Path, cfg: ExperimentConfig) -> int | None:
    """The step of the latest checkpoint a resume of ``run_dir`` would start from (None when
    there is none, or it lies on a remote ``storage_path`` this does not read)."""
    from g4mm.train.checkpoint import CHECKPOINT_FILE, load_checkpoint

    candidates = [run_dir / "checkpoints" / "last" / CHECKPOINT_FILE]
    ray_run = load_ray_run(run_dir)
    if ray_run is not None and "://" not in ray_run["storage_path"]:
        found = sorted((Path(ray_run["storage_path"]) / ray_run["name"]).glob(
            f"checkpoint_*/{CHECKPOINT_FILE}"))  # fmt: skip
        candidates = found[-1:] + candidates  # Ray names them by time: the last is the latest
    for path in candidates:
        if path.is_file():
            try:
                return int(load_checkpoint(path)["step"])
            except Exception:  # a torn file: report none rather than fail the stop message
                return None
    return None


def resume_command(run_dir: Path, in_process: bool = False) -> str:
    """The command that continues the run in ``run_dir``."""
    extra = " --in-process" if in_process else ""
    return f"python jobs/train.py --resume {shlex.quote(str(run_dir))}{extra}"


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (``kill PID``, a scheduler's pre-emption, ``ray job stop``) raises
    KeyboardInterrupt in the main thread, so it stops the run as Ctrl-C does: cleanly, with
    the checkpoints kept and the resume command printed."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
