"""Trial records from Tune's saved experiment state (Ray module)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ray import tune
from ray.tune.experiment import Trial

from g4mm.tune.ray_trial import TEST_PHASE
from g4mm.tune.records import TrialRecord
from g4mm.tune.space import SearchSpace

__all__ = ["collect_records", "saved_trials"]


def saved_trials(exp_dir: Path) -> list[Trial]:
    """The trials as Tune saved them last: an interrupted trial is still PENDING there (the
    in-memory copies all read TERMINATED once Tune has stopped them)."""
    return list(tune.ExperimentAnalysis(str(exp_dir)).trials)


def _error_line(trial: Trial) -> str | None:
    try:
        error = trial.get_error()
    except Exception:  # pragma: no cover - unreadable error file
        error = None
    if error is None:
        return "error (no details stored)"
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def collect_records(
    trials: Sequence[Trial], space: SearchSpace, metric: str, interrupted: bool
) -> list[TrialRecord]:
    """A :class:`TrialRecord` per Tune trial (status derived from its last report)."""
    records = []
    for trial in trials:
        last = trial.last_result or {}
        completed = last.get("phase") == TEST_PHASE
        iterations = int(last.get("training_iteration") or 0)
        if trial.status == Trial.ERROR:
            status = "error"
        elif completed:
            status = "completed"
        elif trial.status == Trial.TERMINATED and iterations:
            status = "stopped"
        elif iterations or (interrupted and trial.status == Trial.RUNNING):
            status = "interrupted"
        else:
            status = "pending"
        score = last.get(metric)
        numbers = {
            k: float(v)
            for k, v in last.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and (k.startswith(("val_", "test_")) or k in ("loss", "train_loss"))
        }
        step = last.get("step")
        records.append(
            TrialRecord(
                trial_id=trial.trial_id,
                status=status,
                params={k: trial.config[k] for k in space.names if k in trial.config},
                score=float(score) if isinstance(score, (int, float)) else None,
                metrics=numbers,
                evals=iterations - (1 if completed else 0),
                last_step=int(step) if isinstance(step, (int, float)) else None,
                train_s=last.get("train_s") if completed else None,
                trial_s=last.get("time_total_s"),
                run_dir=last.get("run_dir"),
                prep_key=last.get("prep_key"),
                error=_error_line(trial) if status == "error" else None,
            )
        )
    return records
