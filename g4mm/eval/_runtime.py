"""Shared plumbing for the evaluation loops: device, eval mode, autocast, collator variants."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn


def resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (CPU if none)."""
    if device is not None:
        return torch.device(device)
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_context(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode + ``torch.inference_mode`` (+ bf16 autocast on CUDA); the model's previous
    train/eval mode is restored on exit."""
    was_training = model.training
    model.eval()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    try:
        with torch.inference_mode(), autocast:
            yield
    finally:
        model.train(was_training)


def with_targets(collator: Any, value: bool) -> Any:
    """A shallow copy of ``collator`` with ``with_targets=value`` (the caller's collator is never
    mutated; feature tables and the ``missing_features`` counter stay shared)."""
    if getattr(collator, "with_targets", value) == value:
        return collator
    if dataclasses.is_dataclass(collator):
        return dataclasses.replace(collator, with_targets=value)
    clone = copy.copy(collator)
    clone.with_targets = value
    return clone


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of at most ``size`` items, in order."""
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
