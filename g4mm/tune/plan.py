"""What a sweep runs (Ray-free): its settings, saved as ``sweep.json`` for ``--resume``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from g4mm.config import ExperimentConfig
from g4mm.train.selection import score_key
from g4mm.tune.space import GRID_TARGETS, Param, SearchSpace

__all__ = ["SweepSpec", "grid_space", "new_spec", "num_evals"]


@dataclass
class SweepSpec:
    """How a sweep runs; saved as ``sweep.json`` so ``--resume`` repeats it exactly.

    Attributes:
        grid: ``--grid variants`` (every variant x seed, no scheduler) instead of a search.
        runner: ``in_process`` or ``ray_train`` (``auto`` resolved at start).
        metric: the reported key searched on, e.g. ``val_cider``.
        mode: ``max`` or ``min``.
        num_samples: trials of a search (grid: variants x seeds).
        max_concurrent: trials at once.
        prep_root: the preprocess cache root.
        variants, seeds: the grid's axes.
        max_t, grace_period, reduction_factor: ASHA, in evaluation rounds.
    """

    grid: bool
    runner: str
    metric: str
    mode: str
    num_samples: int
    max_concurrent: int
    prep_root: str
    variants: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    max_t: int = 1
    grace_period: int = 1
    reduction_factor: int = 2


def num_evals(cfg: ExperimentConfig) -> int:
    """Evaluation rounds of one training run (every ``eval_every`` steps and at the end)."""
    t = cfg.train
    return t.max_steps // t.eval_every + (1 if t.max_steps % t.eval_every else 0)


def grid_space(variants: Sequence[str], seeds: Sequence[int]) -> SearchSpace:
    """The ``--grid variants`` axes as a space (for the leaderboard and the trial configs)."""
    return SearchSpace(
        (
            Param("variant", GRID_TARGETS["variant"], "categorical", tuple(variants)),
            Param("seed", GRID_TARGETS["seed"], "categorical", tuple(int(s) for s in seeds)),
        ),
        name="grid-variants",
        description="every variant with the same seeds",
    )


def new_spec(
    cfg: ExperimentConfig,
    prep_root: str,
    grid_variants: Sequence[str] | None,
    seeds: Sequence[int] | None,
) -> SweepSpec:
    """Settings of a new sweep of ``cfg`` (a grid when ``grid_variants`` is given)."""
    max_t = num_evals(cfg)
    spec = SweepSpec(
        grid=grid_variants is not None,
        runner=cfg.tune.trial_runner,
        metric=score_key(cfg),
        mode=cfg.tune.mode,
        num_samples=cfg.tune.num_samples,
        max_concurrent=cfg.tune.max_concurrent,
        prep_root=prep_root,
        max_t=max_t,
        grace_period=min(cfg.tune.grace_period, max_t),
        reduction_factor=cfg.tune.reduction_factor,
    )
    if spec.grid:
        spec.variants = list(grid_variants or [])
        spec.seeds = [int(s) for s in (seeds if seeds else [cfg.train.seed])]
        spec.num_samples = len(spec.variants) * len(spec.seeds)
    return spec
