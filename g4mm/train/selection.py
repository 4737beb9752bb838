"""Which evaluation is "best": ``tune.metric`` on the validation set, in ``tune.mode``."""

from __future__ import annotations

import math
from typing import Any


def score_key(cfg: Any) -> str:
    """The reported key that ranks checkpoints, e.g. ``val_cider`` or ``val_accuracy``."""
    metric = cfg.tune.metric
    return metric if metric.startswith("val_") else f"val_{metric.removeprefix('val_')}"


def is_score(value: Any) -> bool:
    """A usable score: present and not NaN (a metric that could not be computed is neither)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def is_better(candidate: float | None, best: float | None, mode: str) -> bool:
    """Whether a later evaluation's ``candidate`` replaces ``best`` in ``mode``: better or
    equal (ties go to the later checkpoint, as in :func:`ranking`)."""
    if not is_score(candidate):
        return False
    if not is_score(best):
        return True
    return ranking(candidate, 1, mode) > ranking(best, 0, mode)


def ranking(score: float, step: int, mode: str) -> tuple[float, int]:
    """Sort key whose maximum is the best evaluation in ``mode``; ties: the later step."""
    return (score if mode == "max" else -score, step)
