"""AdamW over the adapter's parameter groups and a linear-warmup + cosine schedule."""

from __future__ import annotations

import math
from typing import Any

import torch


def build_optimizer(model: Any, train_cfg: Any, device: torch.device) -> torch.optim.AdamW:
    """AdamW on ``model.parameter_groups`` (adapter only; decay on matrices): one fused kernel
    per step on CUDA, the multi-tensor (foreach) path elsewhere."""
    on_cuda = device.type == "cuda"
    return torch.optim.AdamW(
        model.parameter_groups(train_cfg.weight_decay),
        lr=train_cfg.lr,
        betas=tuple(train_cfg.betas),
        fused=True if on_cuda else None,
        foreach=None if on_cuda else True,
    )


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_ratio: float = 0.1) -> float:
    r"""LR multiplier: linear warmup to 1 over ``warmup_steps``, then cosine decay to ``min_ratio``.

    .. math::
        f(s) = \begin{cases} (s + 1) / w & s < w \\
        r + (1 - r) \tfrac{1}{2}\left(1 + \cos \pi \tfrac{s - w}{\max(1, S - w)}\right) & s \ge w
        \end{cases}
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: Any):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(step, train_cfg.warmup_steps, train_cfg.max_steps),
    )
