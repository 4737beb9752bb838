"""Host -> device batch transfer that never makes the host wait for the device."""

from __future__ import annotations

import torch
from torch import Tensor

from g4mm.model.inputs import Graph4MMInputs


def pinned(tensor: Tensor) -> Tensor:
    """``tensor`` in page-locked host memory when it is a host tensor (a non-blocking copy to
    CUDA from pageable memory would be synchronous); device tensors are returned as they are."""
    if tensor.device.type != "cpu" or tensor.is_pinned():
        return tensor
    return tensor.pin_memory()


def to_device(batch: Graph4MMInputs, device: torch.device) -> Graph4MMInputs:
    """``batch.to(device)``; on CUDA through pinned host memory with ``non_blocking`` copies,
    so the host queues the step's kernels without waiting for the previous step to finish.
    A batch already on the device is returned without copies."""
    if device.type != "cuda":
        return batch.to(device)
    return batch.map_tensors(lambda t: pinned(t).to(device, non_blocking=True))


def copy_batch_(dst: Graph4MMInputs, src: Graph4MMInputs) -> None:
    """Copy batch ``src`` into ``dst``'s tensors of the same shapes (a recorded step's static
    inputs); from the host to CUDA through pinned memory without blocking the host."""
    for target, source in zip(dst.tensors(), src.tensors(), strict=True):
        if target.device.type == "cuda":
            source = pinned(source)
        target.copy_(source, non_blocking=True)
