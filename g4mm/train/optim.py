"""AdamW over the adapter's parameter groups and a linear-warmup + cosine schedule."""

from __future__ import annotations

import math
from typing import Any

import torch


def build_optimizer(
    model: Any, train_cfg: Any, device: torch.device, capturable: bool = False
) -> torch.optim.AdamW:
    """AdamW on ``model.parameter_groups`` (adapter only; decay on matrices): one fused kernel
    per step on CUDA, the multi-tensor (foreach) path elsewhere. ``capturable`` (for a step
    recorded as a CUDA graph, :mod:`g4mm.train.step_graph`): the fused kernel on any device,
    with the learning rate held in a tensor (see :func:`store_lr`)."""
    fused = device.type == "cuda" or capturable
    return torch.optim.AdamW(
        model.parameter_groups(train_cfg.weight_decay),
        lr=train_cfg.lr,
        betas=tuple(train_cfg.betas),
        fused=True if fused else None,
        foreach=None if fused else True,
        capturable=capturable,
    )


def store_lr(optimizer: torch.optim.Optimizer, as_tensor: bool) -> None:
    """Hold each param group's current ``lr`` in a 0-dim tensor on its parameters' device
    (``as_tensor``; the scheduler then updates it in place with ``fill_``, which a recorded
    CUDA graph sees, while a Python float would stay frozen at its value at capture), or as
    a float. Also sets the groups' ``capturable`` flag to match, and with ``as_tensor`` puts
    each parameter's AdamW step count on its device (``load_state_dict`` places it by the
    SAVED groups' flags: a checkpoint from a CPU run keeps it on the CPU, which a capturable
    or fused CUDA step cannot use). Call after building or after ``load_state_dict`` (a
    checkpoint keeps whichever form it was saved with)."""
    for group in optimizer.param_groups:
        lr, device = group["lr"], group["params"][0].device
        if as_tensor and not (isinstance(lr, torch.Tensor) and lr.device == device):
            group["lr"] = torch.tensor(float(lr), device=device)  # (a checkpoint's is on CPU)
        elif not as_tensor and isinstance(lr, torch.Tensor):
            group["lr"] = float(lr)
        group["capturable"] = as_tensor
        if not as_tensor:
            continue
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            step = state.get("step")
            if isinstance(step, torch.Tensor) and step.device != param.device:
                state["step"] = step.to(param.device, torch.float32)


def lr_of_last_step(scheduler: Any) -> float:
    """The learning rate the last optimizer step used (param group 0), from the schedule
    itself: ``base_lr * f(last_epoch - 1)`` (``scheduler.step()`` has already moved on to the
    next step's value; no read of a tensor lr, so no device sync)."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch - 1)


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
