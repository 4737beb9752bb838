"""Run tracking in MLflow: every training run and every sweep, browsable with ``mlflow ui``.

One MLflow run per training run (``jobs/train.py``, in-process or Ray Train): the resolved
config as params, each evaluation's numbers as metrics at their optimizer step (logged as the
evaluation happens: by the process that evaluates, i.e. Ray Train's rank 0), the test metrics,
the run directory's files (config.yaml, metrics.json, history.jsonl, predictions.jsonl, the
plots) as artifacts, and tags ``variant``, ``backbone``, ``dataset``, ``commit``, ``run_dir``.
A resumed run (``--resume``) continues the same MLflow run: its id is kept in the run
directory's ``mlflow_run.json``. A sweep is a parent run with one child per trial (see
:mod:`g4mm.tune.ray_search`).

The store is ``train.tracking_uri`` (or MLflow's ``MLFLOW_TRACKING_URI``): by default
``sqlite:///<train.output_dir>/mlflow.db``, a
SQLite file every process on this machine can write; artifacts then go beside it
(``<output_dir>/mlartifacts``). On a cluster, point every node at one tracking server
(``mlflow server --backend-store-uri postgresql://... --artifacts-destination s3://...``,
``--set train.tracking_uri=http://HEAD:5000``). Browse with
``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``.

Only what MLflow accepts is sent: finite numbers as metrics (a NaN score stays in
metrics.json as null), params cut to MLflow's length limit.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from g4mm.train.run_dir import RUN_FILES

__all__ = [
    "MLFLOW_RUN_FILE",
    "RUN_ARTIFACTS",
    "TrackedRun",
    "default_tracking_uri",
    "finite_metrics",
    "log_run_end",
    "open_tracked_run",
    "tracking_uri",
]

MLFLOW_RUN_FILE = "mlflow_run.json"
#: the run directory's files logged as artifacts at the end of a run
RUN_ARTIFACTS = RUN_FILES
_PARAM_LIMIT = 6000  # MLflow 3's longest param value


def default_tracking_uri(output_dir: str | os.PathLike[str]) -> str:
    """``sqlite:///<abs output_dir>/mlflow.db``."""
    path = Path(output_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def tracking_uri(cfg: Any) -> str:
    """The store of ``cfg``'s runs: ``train.tracking_uri``, else MLflow's own
    ``MLFLOW_TRACKING_URI`` when set, else :func:`default_tracking_uri`. A relative SQLite
    path (``sqlite:///mlflow.db``) is made absolute: Ray workers run in other directories."""
    uri = (cfg.train.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
           or default_tracking_uri(cfg.train.output_dir))  # fmt: skip
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a SQLite store; a server decides itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def finite_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``metrics`` (bools and NaN/inf left out), keys prefixed."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str:
    """The checkout's commit (``-dirty`` when it has uncommitted changes), or ``unknown``."""
    where = cwd or Path(__file__).resolve().parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()  # fmt: skip

        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(cfg: Any, run_dir: Path | None = None) -> dict[str, str]:
    tags = {
        "variant": cfg.model.variant,
        "backbone": cfg.model.lm,
        "dataset": cfg.data.dataset,
        "config": cfg.name,
        "commit": git_commit(),
    }
    if run_dir is not None:
        tags["run_dir"] = str(run_dir)
    return tags


def _client(uri: str):
    """MLflow's client for ``uri``; MLflow's own INFO lines ("Creating initial MLflow database
    tables...") off the console unless verbose."""
    import logging

    from g4mm.console import verbose

    if not verbose():
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        from mlflow import MlflowClient
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise RuntimeError(
            "train.tracking is 'mlflow' but MLflow is not installed: pip install 'mlflow>=3.1', "
            "or --set train.tracking=none"
        ) from exc
    return MlflowClient(tracking_uri=uri)


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (with its artifact root) when missing; safe when
    two processes create it at once."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(uri))
    except Exception:  # created meanwhile by another process: read it back
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _warn_untracked(what: str, err: Exception) -> None:
    print(f"warning: MLflow tracking failed ({what}: {type(err).__name__}: {err}); the run goes "
          "on, and its run directory has everything", file=sys.stderr, flush=True)  # fmt: skip


@dataclass
class TrackedRun:
    """An MLflow run to log into, by id: picklable, so Ray Train's rank 0 logs its
    evaluations into the driver's run (``train_loop_config['tracking']``).

    A failing tracking store never stops training: the public methods warn once and the run
    goes on untracked (``failed``)."""

    uri: str
    run_id: str
    failed: bool = False

    def _guard(self, what: str, action) -> None:
        if self.failed:
            return
        try:
            action()
        except Exception as err:  # a store down, a network error: the run matters more
            self.failed = True
            _warn_untracked(what, err)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_PARAM_LIMIT]) for k, v in params.items()]
        client = _client(self.uri)
        for start in range(0, len(items), 100):  # MLflow's batch limit for params
            client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int, prefix: str = "") -> None:
        """Every finite number of ``metrics`` at ``step`` (one request)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, int(step)) for k, v in finite_metrics(metrics, prefix).items()]
        if items:
            _client(self.uri).log_batch(self.run_id, metrics=items)

    def log_evaluation(self, metrics: Mapping[str, Any]) -> None:
        """One evaluation's report (``step`` among its keys), e.g. ``val_cider``, ``train_loss``."""
        numbers = {k: v for k, v in metrics.items() if k != "step"}
        self._guard("metrics", lambda: self.log_metrics(numbers, metrics["step"]))

    def log_files(self, directory: Path, names: tuple[str, ...] = RUN_ARTIFACTS) -> None:
        client = _client(self.uri)
        for name in names:
            if (directory / name).is_file():
                client.log_artifact(self.run_id, str(directory / name))

    def finish(self, status: str = "FINISHED") -> None:
        self._guard("end", lambda: _client(self.uri).set_terminated(self.run_id, status=status))

    def save(self, run_dir: Path) -> None:
        (run_dir / MLFLOW_RUN_FILE).write_text(
            json.dumps({"uri": self.uri, "run_id": self.run_id}, indent=2) + "\n"
        )

    @property
    def url_hint(self) -> str:
        """How to look at it."""
        if self.uri.startswith("sqlite:///"):
            return f"mlflow ui --backend-store-uri {self.uri}  (run {self.run_id})"
        return f"{self.uri} (run {self.run_id})"


def open_tracked_run(
    cfg: Any,
    run_dir: Path,
    *,
    parent_run_id: str | None = None,
    run_name: str | None = None,
) -> TrackedRun | None:
    """The MLflow run of ``run_dir``: the one recorded in its ``mlflow_run.json`` (a resumed
    run, reopened), else a new one in experiment ``cfg.name`` with the config as params.
    None when ``train.tracking`` is ``none``."""
    if cfg.train.tracking == "none":
        return None
    try:
        return _open_tracked_run(cfg, run_dir, parent_run_id, run_name)
    except Exception as err:  # the store unreachable or broken: train untracked, say so
        _warn_untracked(f"opening a run in {tracking_uri(cfg)}", err)
        return None


def _open_tracked_run(
    cfg: Any, run_dir: Path, parent_run_id: str | None, run_name: str | None
) -> TrackedRun:
    uri = tracking_uri(cfg)
    record = run_dir / MLFLOW_RUN_FILE
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("uri") == uri:
            client = _client(uri)
            client.update_run(saved["run_id"], status="RUNNING")
            return TrackedRun(uri, saved["run_id"])
    client = _client(uri)
    tags = run_tags(cfg, run_dir)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id(client, cfg.name, uri),
                            run_name=run_name or run_dir.name, tags=tags)  # fmt: skip
    tracked = TrackedRun(uri, run.info.run_id)
    tracked.log_params({k: v for k, v in cfg.to_flat_dict().items() if k != "name"})
    tracked.save(run_dir)
    return tracked


def log_run_end(tracked: TrackedRun, final: Mapping[str, Any], run_dir: Path) -> None:
    """The test metrics and timings of ``final`` (metrics.json) at the run's last step, and the
    run directory's files as artifacts. The ``val_*`` of the selected checkpoint are not logged
    again: they are on the curve at ``best_step`` already."""
    kept = ("best_step", "total_wall_s", "preprocess_s")
    summary = {k: v for k, v in final.items() if k.startswith("test_") or k in kept}
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()
               if line.strip()]  # fmt: skip
    steps = [h["step"] for h in history]
    tracked._guard("curve", lambda: _backfill(tracked, history))
    tracked._guard("test metrics", lambda: tracked.log_metrics(summary, step=max(steps, default=0)))
    tracked._guard("artifacts", lambda: tracked.log_files(run_dir))


def _backfill(tracked: TrackedRun, history: list[dict[str, Any]]) -> None:
    """Log the evaluations of ``history`` that the MLflow run lacks: one checkpointed just
    before a driver was killed (the checkpoint is written first) and resumed past."""
    logged = {m.step for m in _client(tracked.uri).get_metric_history(tracked.run_id, "train_loss")}
    for entry in history:
        if entry["step"] not in logged:
            tracked.log_evaluation(entry)
