"""A sweep in MLflow (Ray module): one parent run for the sweep, one child run per trial.

The children come from Ray Tune's own MLflow integration (``MLflowLoggerCallback``, run in the
sweep driver): the trial's sampled parameters as params and every report as metrics. Two
things are added here: a report's metrics are logged at the trial's optimizer ``step`` (not
Tune's report count, so curves of trials line up with the runs of ``jobs/train.py``), and a
finished trial's run directory (config, metrics, predictions, plots) becomes the child's
artifacts. The parent holds the sweep's settings as params, the best trial's score, and the
leaderboard and ablation table as artifacts (:func:`finish_sweep_run`). Its id is kept in the
sweep's ``mlflow_run.json``: a resumed sweep logs into the same parent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from g4mm.config import ExperimentConfig
from g4mm.tracking import (
    MLFLOW_RUN_FILE,
    TrackedRun,
    _client,
    experiment_id,
    run_tags,
    tracking_uri,
)

__all__ = ["TrialRunsToMLflow", "finish_sweep_run", "open_sweep_run"]

#: the sweep's output files logged on its parent run
SWEEP_ARTIFACTS = ("leaderboard.csv", "leaderboard.md", "ablation.md", "ablation.csv",
                   "best.yaml", "importances.png", "metric_by_variant.png", "summary.json",
                   "config.yaml", "space.yaml", "sweep.json")  # fmt: skip


class TrialRunsToMLflow(MLflowLoggerCallback):
    """Tune's ``MLflowLoggerCallback``, with each trial a child of the sweep's parent run,
    metrics at the trial's optimizer step, and the trial's run directory as artifacts."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str, trials_dir: Path,
                 tags: dict[str, str]) -> None:  # fmt: skip
        tags = {**tags, "mlflow.parentRunId": parent_run_id}
        super().__init__(tracking_uri=uri, experiment_name=experiment, tags=tags,
                         save_artifact=False)  # fmt: skip
        self.trials_dir = Path(trials_dir)

    def get_state(self) -> dict:
        """Trial id -> MLflow run id, kept in Tune's experiment checkpoint: a resumed sweep
        logs a restarted trial into its own child run, not a second one."""
        saved = dict(getattr(self, "_saved_runs", {}))
        saved.update({t.trial_id: run_id for t, run_id in getattr(self, "_trial_runs", {}).items()})
        return {"runs": saved}

    def set_state(self, state: dict) -> None:
        self._saved_runs = dict(state.get("runs", {}))

    def log_trial_start(self, trial: Any) -> None:
        saved = getattr(self, "_saved_runs", {})
        if trial not in self._trial_runs and trial.trial_id in saved:
            self._trial_runs[trial] = saved[trial.trial_id]
            self.mlflow_util._get_client().update_run(saved[trial.trial_id], status="RUNNING")
        super().log_trial_start(trial)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        step = result.get("step")
        if not isinstance(step, int | float) or not math.isfinite(step):
            step = result.get("training_iteration", iteration)
        run_id = self._trial_runs[trial]
        numbers = {k: v for k, v in result.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
        self.mlflow_util.log_metrics(run_id=run_id, metrics_to_log=numbers, step=int(step))

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        run_dir = self.trials_dir / trial.trial_id
        if run_dir.is_dir() and trial in self._trial_runs:
            TrackedRun(self.tracking_uri, self._trial_runs[trial]).log_files(run_dir)
        super().log_trial_end(trial, failed)


def open_sweep_run(cfg: ExperimentConfig, output: Path, description: dict[str, Any]):
    """``(TrackedRun, callback)`` of a sweep: its parent run (reopened when ``output`` holds
    one already: a resumed sweep) and the Tune callback that logs its trials as children.
    ``(None, None)`` when ``train.tracking`` is ``none``."""
    if cfg.train.tracking == "none":
        return None, None
    uri = tracking_uri(cfg)
    client = _client(uri)
    record = output / MLFLOW_RUN_FILE
    saved = json.loads(record.read_text()) if record.is_file() else {}
    tags = {k: v for k, v in run_tags(cfg).items() if k in ("config", "commit", "dataset")}
    if saved.get("uri") == uri:
        parent = TrackedRun(uri, saved["run_id"])
        client.update_run(parent.run_id, status="RUNNING")
    else:
        tags = {**tags, "kind": "sweep", "sweep_dir": str(output)}
        run = client.create_run(experiment_id(client, cfg.name, uri), run_name=output.name,
                                tags=tags)  # fmt: skip
        parent = TrackedRun(uri, run.info.run_id)
        parent.log_params(description)
        parent.save(output)
    trial_tags = {k: v for k, v in tags.items() if k not in ("kind", "sweep_dir")}
    callback = TrialRunsToMLflow(uri, cfg.name, parent.run_id, output / "trials",
                                 {**trial_tags, "kind": "trial"})  # fmt: skip
    return parent, callback


def finish_sweep_run(parent: TrackedRun, output: Path, summary: dict[str, Any]) -> None:
    """The sweep's best score and its tables on the parent run; FINISHED, or KILLED when the
    sweep was interrupted (it can be resumed into the same parent)."""
    numbers = {k: v for k, v in summary.items() if k in ("trials", "completed", "stopped_early",
                                                         "error", "wall_s")}  # fmt: skip
    if isinstance(summary.get("best_score"), int | float):
        numbers[f"best_{summary['metric']}"] = summary["best_score"]
    parent.log_metrics(numbers, step=0)
    if summary.get("best_trial"):
        _client(parent.uri).set_tag(parent.run_id, "best_trial", str(summary["best_trial"]))
    parent.log_files(output, SWEEP_ARTIFACTS)
    parent.finish("KILLED" if summary.get("interrupted_run") else "FINISHED")
