"""A sweep's report files and summary from its trial records (Ray-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from g4mm.config import ExperimentConfig
from g4mm.tune.plan import SweepSpec
from g4mm.tune.records import (
    STATUSES,
    TrialRecord,
    best_record,
    leaderboard_rows,
    write_best_config,
    write_leaderboard,
)
from g4mm.tune.report import (
    ablation_table,
    param_importances,
    plot_sweep,
    slot_accuracy_table,
    write_ablation,
    write_importances,
)
from g4mm.tune.space import SearchSpace

__all__ = ["summarize", "write_outputs"]


def write_outputs(
    output: Path,
    cfg: ExperimentConfig,
    space: SearchSpace,
    spec: SweepSpec,
    records: list[TrialRecord],
) -> dict[str, Any]:
    """Leaderboard, best.yaml, importances, ablation table, plots; returns their summary."""
    metrics = cfg.eval.keys
    rows = leaderboard_rows(records, space.names, spec.metric, metrics, spec.mode)
    title = f"{'grid over variants' if spec.grid else 'search'}: {cfg.name}, by {spec.metric}"
    write_leaderboard(output, rows, title)
    best = best_record(records, spec.mode)
    if best is not None:
        write_best_config(output / "best.yaml", cfg, best, space.targets, spec.metric)
    importances = param_importances(records, space, spec.mode)
    write_importances(output, importances)
    table = ablation_table(records, metrics, spec.mode, "mean" if spec.grid else "best")
    caption = (
        f"test metrics, mean ± std over seeds {spec.seeds}"
        if spec.grid
        else f"test metrics of each variant's best trial by {spec.metric}"
    )
    slots = (
        slot_accuracy_table(table, output / "trials")
        if cfg.data.dataset == "synthetic-docs" and table
        else []
    )
    write_ablation(output, table, metrics, f"{cfg.name}; {caption}", slots)
    plot_sweep(output, records, space, spec.metric)
    return {
        "best_trial": best.trial_id if best else None,
        "best_score": best.score if best else None,
        "best_params": best.params if best else None,
        "importances": importances,
    }


def summarize(
    cfg: ExperimentConfig, spec: SweepSpec, records: list[TrialRecord], interrupted: bool
) -> dict[str, Any]:
    """Counts by status (``stopped`` = stopped early by ASHA), settings, interruption."""
    counts = {s: sum(r.status == s for r in records) for s in STATUSES}
    early = [r for r in records if r.status == "stopped"]
    return {
        "name": cfg.name,
        "mode": "grid" if spec.grid else "search",
        "runner": spec.runner,
        "metric": spec.metric,
        "metric_mode": spec.mode,
        "trials": len(records),
        **counts,
        "stopped_early": len(early),
        "stopped_before_max_steps": sum((r.last_step or 0) < cfg.train.max_steps for r in early),
        "interrupted_run": interrupted,
        "asha": None
        if spec.grid
        else {
            "max_t": spec.max_t,
            "grace_period": spec.grace_period,
            "reduction_factor": spec.reduction_factor,
        },
    }
