"""One record per trial, the leaderboard (CSV + Markdown) and the best trial's config (Ray-free).

A :class:`TrialRecord` is built by the Ray driver from what a trial reported to Tune, so the
leaderboard never depends on files a trial wrote on another node. Status values:

- ``completed``: trained to ``train.max_steps`` and tested (its last report has phase "test");
- ``stopped``: stopped by the scheduler (ASHA) after some evaluations;
- ``error``: the trial raised; ``interrupted``: running when the search was interrupted;
- ``pending``: never started.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from g4mm.config import ExperimentConfig
from g4mm.tune.space import trial_config

__all__ = [
    "STATUSES",
    "TrialRecord",
    "best_record",
    "leaderboard_rows",
    "rank_records",
    "write_best_config",
    "write_leaderboard",
]

STATUSES: tuple[str, ...] = ("completed", "stopped", "error", "interrupted", "pending")


@dataclass
class TrialRecord:
    """What one trial reported.

    Attributes:
        trial_id: Tune's trial id.
        status: one of :data:`STATUSES`.
        params: the sampled parameters (absent conditional ones are missing, not None).
        score: the searched metric (``val_<tune.metric>``): the best validation value for a
            completed trial, the last one otherwise; None when nothing was reported.
        metrics: other numbers from the last report (``test_*`` once completed, ``val_*``).
        evals: validation rounds reported.
        last_step: optimizer steps trained when last reported.
        train_s: the trial's own wall time for training + testing (completed trials).
        trial_s: Tune's total time of the trial.
        run_dir: the trial's run directory (config.yaml, metrics.json, checkpoints/best).
        prep_key: the preprocess cache key the trial read.
        error: first line of the error, for failed trials.
    """

    trial_id: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    evals: int = 0
    last_step: int | None = None
    train_s: float | None = None
    trial_s: float | None = None
    run_dir: str | None = None
    prep_key: str | None = None
    error: str | None = None

    @property
    def has_score(self) -> bool:
        return self.score is not None and math.isfinite(self.score)


def rank_records(records: Sequence[TrialRecord], mode: str) -> list[TrialRecord]:
    """Best first by ``score`` in ``mode`` ("max"/"min"); trials without a score last."""
    sign = -1.0 if mode == "max" else 1.0

    def key(r: TrialRecord) -> tuple:
        return (not r.has_score, sign * r.score if r.has_score else 0.0, r.trial_id)

    return sorted(records, key=key)


def best_record(records: Sequence[TrialRecord], mode: str) -> TrialRecord | None:
    """The best completed trial; else the best other trial with a score (failed ones never);
    else None."""
    ranked = [r for r in rank_records(records, mode) if r.has_score and r.status != "error"]
    completed = [r for r in ranked if r.status == "completed"]
    return (completed or ranked or [None])[0]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return str(value)


def leaderboard_rows(
    records: Sequence[TrialRecord],
    param_names: Sequence[str],
    score_name: str,
    metric_names: Sequence[str],
    mode: str,
) -> list[dict[str, Any]]:
    """One dict per trial, best first: rank, trial_id, status, every parameter, the score,
    the test metrics, evals, last_step, train_s, trial_s, run_dir (missing values: None), and
    the error of failed trials when there are any."""
    rows = []
    any_error = any(r.error for r in records)
    for rank, r in enumerate(rank_records(records, mode), start=1):
        row: dict[str, Any] = {"rank": rank, "trial_id": r.trial_id, "status": r.status}
        row.update({name: r.params.get(name) for name in param_names})
        row[score_name] = r.score
        row.update({f"test_{m}": r.metrics.get(f"test_{m}") for m in metric_names})
        row.update(
            evals=r.evals,
            last_step=r.last_step,
            train_s=r.train_s,
            trial_s=r.trial_s,
            run_dir=r.run_dir,
        )
        if any_error:
            row["error"] = r.error
        rows.append(row)
    return rows


def write_leaderboard(
    out_dir: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], title: str = ""
) -> tuple[Path, Path]:
    """``leaderboard.csv`` (every column, empty where absent) and ``leaderboard.md``."""
    out_dir = Path(out_dir)
    columns = list(rows[0]) if rows else ["rank", "trial_id", "status"]
    csv_path = out_dir / "leaderboard.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    shown = [c for c in columns if c != "run_dir"]
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(shown) + " |")
    lines.append("|" + "|".join("---" for _ in shown) + "|")
    lines.extend("| " + " | ".join(_fmt(row.get(c)) for c in shown) + " |" for row in rows)
    md_path = out_dir / "leaderboard.md"
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def write_best_config(
    path: str | os.PathLike[str],
    base: ExperimentConfig,
    best: TrialRecord,
    targets: Mapping[str, str],
    score_name: str,
) -> Path:
    """The best trial's full experiment config, loadable by ``jobs/train.py --config PATH``."""
    cfg = trial_config(base, best.params, targets).updated({"name": f"{base.name}-best"})
    path = cfg.save_yaml(path)
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
    note = (
        f"# best trial {best.trial_id} ({best.status}): {score_name} = {_fmt(best.score)}\n"
        f"# sampled: {params}\n"
    )
    path.write_text(note + path.read_text())
    return path
