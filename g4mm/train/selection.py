"""Which evaluation is "best": ``tune.metric`` on the validation set, in ``tune.mode``."""

from __future__ import annotations

import math
from typing import Any


def score_key(cfg: Any) -> str:
    """The reported key that ranks checkpoints, e.g. ``val_cider`` or ``val_accuracy``."""
    metric = cfg.tune.metric
    return metric if metric.startswith("val_") else f"val_{metric.removeprefix('val_')}"


def is_better(candidate: float | None, best: float | None, mode: str) -> bool:
    if candidate is None or (isinstance(candidate, float) and math.isnan(candidate)):
        return False
    if best is None:
        return True
    return candidate > best if mode == "max" else candidate < best
