"""Data-parallel gradient averaging for steps that bypass DDP's own hooks (the step graph).

DDP averages gradients with autograd hooks that launch bucketed all-reduces during backward;
a backward recorded as a CUDA graph cannot hold those (they are collectives with host-side
bookkeeping). :class:`GradientAllReduce` instead averages the accumulated gradients once per
optimizer step, eagerly, between the replayed micro-steps and the replayed update, with one
collective per dtype over a flat buffer:

    flat = cat(g_1, ..., g_n)  ->  all_reduce(flat, SUM) / world_size  ->  g_i = flat[slice_i]

which is what DDP computes (the mean over ranks of each rank's gradient sum over its
micro-batches), so every rank applies the same update and the replicas stay identical.

Such runs must not wrap the adapter in DDP at all, not even to bypass it: DDP's reducer holds
each parameter's ``AccumulateGrad`` node from its construction, on the stream it was built on,
and a backward recorded on a side stream that meets those nodes invalidates the capture (one
H100, torch 2.11: "operation failed due to a previous error during capture"; the eager
fallback then ran every step). :func:`broadcast_module` does the one other thing DDP's
constructor does, copying rank 0's parameters and buffers to every rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """The data-parallel world: 1 without an initialised process group."""
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank, in place (DDP's start)."""
    if world_size() == 1:
        return
    with torch.no_grad():  # every buffer, persistent or not, as DDP does
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)


class GradientAllReduce:
    """``sync()``: average ``params``' gradients over ``group`` (default: the whole world).

    Parameters whose gradient is None are skipped (the optimizer skips them too); the flat
    buffers are allocated at the first call and reused.
    """

    def __init__(self, params: Sequence[Tensor], group: dist.ProcessGroup | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "GradientAllReduce needs an initialised torch.distributed process group "
                "(Ray Train sets one up for its workers)"
            )
        self.params = list(params)
        self.group = group
        self.world_size = dist.get_world_size(group)
        self._flat: dict[torch.dtype, Tensor] = {}

    def __call__(self) -> None:
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for p in self.params:
            if p.grad is not None:
                by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for dtype, grads in by_dtype.items():
            numel = sum(g.numel() for g in grads)
            flat = self._flat.get(dtype)
            if flat is None or flat.numel() != numel or flat.device != grads[0].device:
                flat = self._flat[dtype] = torch.empty(numel, dtype=dtype, device=grads[0].device)
            torch.cat([g.reshape(-1) for g in grads], out=flat)
            dist.all_reduce(flat, group=self.group)
            flat.div_(self.world_size)
            pieces = flat.split([g.numel() for g in grads])
            torch._foreach_copy_(grads, [v.view_as(g) for v, g in zip(pieces, grads, strict=True)])
