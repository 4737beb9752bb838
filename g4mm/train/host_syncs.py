"""Find the host-device synchronisations of a piece of code without a GPU.

On CUDA the host queues kernels and runs ahead of the device, unless it needs a value the device
has not produced yet: a Python scalar (``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``) or
an output whose *shape* depends on the data (``nonzero``, boolean-mask indexing,
``masked_select``, ``unique``, ``repeat_interleave`` without ``output_size``, ...). Each such
op stalls the host until the device has finished everything queued before it, so a training
step with one in its middle cannot overlap its host work with the device.

:class:`HostSyncAudit` records those ops at the dispatcher (a ``TorchDispatchMode``), so it
finds them on any device, CPU included, together with the line of the project's code that
issued each one::

    with HostSyncAudit() as audit:
        train_loop(...)
    print(audit.report())        # "2 x aten.nonzero.default at g4mm/graph/batch.py:169 ..."

What it cannot see: blocking host-to-device copies of pageable memory and device-to-host
copies (``.cpu()``), which are syncs on CUDA but plain copies on CPU; those show up only under
``torch.cuda.set_sync_debug_mode`` on a GPU (``bench/train_step.py`` counts both).
"""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_PROJECT = Path(__file__).resolve().parents[2]

#: Ops that need a device value on the host: a scalar read or a data-dependent output shape.
SYNCING_OPS: frozenset[str] = frozenset(
    {
        "aten._local_scalar_dense",  # .item(), bool(t), int(t), float(t), .tolist()
        "aten.is_nonzero",
        "aten.equal",
        "aten.nonzero",
        "aten.nonzero_numpy",
        "aten.argwhere",
        "aten.masked_select",
        "aten._unique",
        "aten._unique2",
        "aten.unique_dim",
        "aten.unique_consecutive",
        "aten.bincount",  # output length max(x) + 1
    }
)


def _is_bool_index(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype in (torch.bool, torch.uint8)


def _syncs(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether ``func(*args, **kwargs)`` waits for the device on CUDA."""
    name = func._overloadpacket._qualified_op_name.replace("::", ".")
    if name in SYNCING_OPS:
        return True
    if name in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(_is_bool_index(i) for i in indices or ())
    if name == "aten.repeat_interleave":  # repeats as a tensor: output length sum(repeats)
        return func._overloadname in ("Tensor", "self_Tensor") and kwargs.get("output_size") is None
    return False


def _device_of(args: tuple) -> str:
    """Device type of the first tensor among ``args`` (index lists included)."""
    for value in args:
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, torch.Tensor):
                return item.device.type
    return "?"


def _caller() -> str:
    """``path:line`` of the innermost frame in this project's code outside this module, else
    the innermost frame outside torch and installed packages (for an op of the backward pass,
    the line that called ``backward``)."""
    frames = [f for f in traceback.extract_stack()[:-3] if Path(f.filename) != Path(__file__)]
    outside = [f for f in frames if "site-packages" not in Path(f.filename).parts]
    for frame in reversed(outside):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(_PROJECT):
            return f"{path.relative_to(_PROJECT)}:{frame.lineno}"
    last = (outside or frames)[-1:]
    return f"{last[0].filename}:{last[0].lineno}" if last else "?"


@dataclass(frozen=True)
class HostSync:
    """One would-be synchronisation: the op and the project line that issued it."""

    op: str
    where: str
    device: str


class HostSyncAudit(TorchDispatchMode):
    """Record every op that would synchronise host and device on CUDA (see module doc).

    Attributes:
        syncs: a :class:`collections.Counter` of :class:`HostSync` -> how many times.
    """

    def __init__(self) -> None:
        super().__init__()
        self.syncs: Counter[HostSync] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _syncs(func, args, kwargs):
            self.syncs[HostSync(str(func), _caller(), _device_of(args))] += 1
        return func(*args, **kwargs)

    def on(self, device_type: str) -> int:
        """Would-be synchronisations on tensors of ``device_type`` (on CUDA, scalar reads of
        host tensors, such as the host batch before it is copied, are not syncs)."""
        return sum(n for sync, n in self.syncs.items() if sync.device == device_type)

    @property
    def count(self) -> int:
        """Total would-be synchronisations recorded."""
        return sum(self.syncs.values())

    def report(self) -> str:
        """One line per (op, place), most frequent first; "none" when there were none."""
        if not self.syncs:
            return "none"
        return "\n".join(
            f"{n} x {sync.op} ({sync.device}) at {sync.where}"
            for sync, n in self.syncs.most_common()
        )


def audit_training_step(model: Any, inputs: Any, device: torch.device) -> HostSyncAudit:
    """Audit one optimizer step as :func:`g4mm.train.loop.train_loop` runs it on CUDA:
    forward under the device's autocast, backward, gradient clipping and a fused AdamW step
    (whose step counters live on the device), on ``inputs`` already on ``device``. The model's
    gradients are cleared afterwards; its weights take one small step."""
    from g4mm.train.loop import TRAINING_SDPA_BACKENDS, autocast_for  # loop imports torch only

    optimizer = torch.optim.AdamW(model.parameter_groups(0.0), lr=1e-6, fused=True)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with torch.nn.attention.sdpa_kernel(TRAINING_SDPA_BACKENDS), HostSyncAudit() as audit:
        with autocast_for(device, "auto"):
            out = model(inputs)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return audit
