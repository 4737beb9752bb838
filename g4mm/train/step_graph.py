"""The whole training step as one CUDA graph per batch shape (``train.step_graph``).

At batch 8 of the paper's shapes one H100 finishes a step's kernels faster than the host can
launch them (bench/RESULTS.md: ~1,000 launches per step, the host busy 55 ms against 18 ms of
device work). Recording the step once and replaying it removes the per-kernel launch cost:

    replay(batch) = copy batch -> static inputs;  graph: zero grads -> forward (bf16
                    autocast) -> loss -> backward -> clip grad norm -> fused AdamW

Requirements, all held by :func:`g4mm.train.loop.train_loop`'s step: fixed shapes (each batch
is padded up to a multiple of ``pad_multiple`` prompt / target columns, which changes no loss
or gradient, and one graph is recorded per padded shape), no host synchronisation inside the
step (``tests/test_host_syncs.py``), an optimizer that keeps its step counts and learning rate
on the device (``capturable``, the scheduler writing the lr tensor in place), gradients
allocated before recording (zeroed in place inside the graph). Every step before a shape's
recording runs eagerly and is a real training step; recording failures fall back to eager
steps, logged once. Without CUDA the same static-input path runs eagerly (what the CPU tests
check against the plain step). Not under DDP or gradient accumulation (train_loop checks).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from g4mm.model.inputs import Graph4MMInputs

#: Eager steps a padded shape runs before it is recorded.
GRAPH_WARMUP = 2


def graph_shape(batch: Graph4MMInputs, multiple: int) -> tuple[int, int]:
    """``(prompt width, target width)`` of ``batch`` rounded up to multiples of ``multiple``."""
    assert batch.target_ids is not None, "a training batch has targets"

    def up(width: int) -> int:
        return max(multiple, math.ceil(width / multiple) * multiple)

    return up(batch.prompt_ids.shape[1]), up(batch.target_ids.shape[1])


def shape_key(batch: Graph4MMInputs) -> tuple[tuple[int, ...], ...]:
    """The shapes a recorded step is specialised to (every input tensor's)."""
    return tuple(tuple(t.shape) for t in batch.tensors())


def copy_batch_(dst: Graph4MMInputs, src: Graph4MMInputs) -> None:
    """Copy host batch ``src`` into ``dst``'s device tensors of the same shapes; on CUDA
    through pinned memory without blocking the host."""
    for target, source in zip(dst.tensors(), src.tensors(), strict=True):
        if target.device.type == "cuda":
            source = source.pin_memory()
        target.copy_(source, non_blocking=True)


@dataclass
class _Recorded:
    """One padded shape's static inputs and, on CUDA, its recorded step and loss output."""

    inputs: Graph4MMInputs
    graph: torch.cuda.CUDAGraph | None = None
    loss: Tensor | None = None


@dataclass
class StepGraphStats:
    """Counts for the log: shapes recorded, replayed and eager steps, and a failure, if any."""

    recorded: int = 0
    replays: int = 0
    eager: int = 0
    failure: str | None = None
    padded_tokens: int = 0
    batch_tokens: int = 0

    def summary(self) -> str:
        extra = self.padded_tokens / max(1, self.batch_tokens) - 1
        text = (
            f"step graph: {self.recorded} shapes recorded, {self.replays} replayed steps, "
            f"{self.eager} eager steps, padding +{extra:.1%} LM tokens"
        )
        return text + (f"; recording failed: {self.failure}" if self.failure else "")


@dataclass
class GraphedTrainStep:
    """``step(batch) -> loss``: one optimizer step on a host batch, replayed from a CUDA graph
    once its padded shape has run ``warmup`` eager steps (see the module doc).

    Args:
        model: the Graph4MM model (train mode); ``params``: the parameters to clip;
        optimizer: built with ``capturable=True`` and its lr stored as a tensor
            (:func:`g4mm.train.optim.build_optimizer`, :func:`g4mm.train.optim.store_lr`);
        autocast: a context-manager factory (the training precision's autocast);
        grad_clip: max gradient norm (0: no clipping);
        pad_multiple: prompt and target widths are rounded up to multiples of this;
        warmup: eager steps per shape before it is recorded (lazy initialisation, cuBLAS
            workspaces and the like must not happen during recording);
        max_graphs: shapes recorded at most; later new shapes run eagerly.

    Returns (per call): the step's loss, a 0-dim device tensor valid until the next call.
    """

    model: Any
    optimizer: torch.optim.Optimizer
    params: list[Tensor]
    autocast: Callable[[], contextlib.AbstractContextManager]
    grad_clip: float = 1.0
    pad_multiple: int = 64
    warmup: int = GRAPH_WARMUP
    max_graphs: int = 64
    log: Callable[[str], None] = print
    stats: StepGraphStats = field(default_factory=StepGraphStats)
    _recorded: dict[tuple, _Recorded] = field(default_factory=dict)
    _seen: Counter = field(default_factory=Counter)
    _pool: Any = None

    def __post_init__(self) -> None:
        groups = self.optimizer.param_groups
        if not all(g.get("capturable") and isinstance(g["lr"], Tensor) for g in groups):
            raise ValueError(
                "GraphedTrainStep needs an optimizer built with capturable=True and its lr "
                "stored as a tensor (g4mm.train.optim.build_optimizer / store_lr)"
            )
        self.device = self.params[0].device
        self.on_cuda = self.device.type == "cuda"
        self._side = torch.cuda.Stream(self.device) if self.on_cuda else None
        if self.on_cuda:
            self._pool = torch.cuda.graph_pool_handle()  # one pool: shapes replay one by one

    def __call__(self, batch: Graph4MMInputs) -> Tensor:
        padded = batch.padded_to(*graph_shape(batch, self.pad_multiple))
        self.stats.batch_tokens += _lm_columns(batch)
        self.stats.padded_tokens += _lm_columns(padded)
        key = shape_key(padded)
        recorded = self._recorded.get(key)
        if recorded is not None:
            return self._replay(recorded, padded)
        self._seen[key] += 1
        if (
            self._seen[key] > self.warmup
            and len(self._recorded) < self.max_graphs
            and self.stats.failure is None
        ):
            recorded = self._record(key, padded)
            if recorded is not None:
                return self._replay(recorded, padded)
        self.stats.eager += 1
        return self._eager(padded)

    # ---- the step itself ----------------------------------------------------------------
    def _body(self, inputs: Graph4MMInputs) -> Tensor:
        """Zero the gradients in place, forward, backward, clip, optimizer step; the loss."""
        self.optimizer.zero_grad(set_to_none=False)
        with self.autocast():
            loss = self.model(inputs).loss
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def _eager(self, padded: Graph4MMInputs) -> Tensor:
        """An eager step; on CUDA on a side stream, as recording requires of warm-up work."""
        inputs = padded.to(self.device)
        if self._side is None:
            return self._body(inputs)
        self._side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._side):
            loss = self._body(inputs)
        torch.cuda.current_stream(self.device).wait_stream(self._side)
        return loss

    def _record(self, key: tuple, padded: Graph4MMInputs) -> _Recorded | None:
        """Static inputs for ``key`` and, on CUDA, the recorded step; None if recording
        failed (logged; no further shape is recorded)."""
        static = padded.map_tensors(lambda t: t.to(self.device, copy=True))  # never aliased
        if not self.on_cuda:
            self._recorded[key] = _Recorded(static)
            self.stats.recorded += 1
            return self._recorded[key]
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize(self.device)
            with torch.cuda.graph(graph, pool=self._pool):
                loss = self._body(static)
        except Exception as err:  # capture errors surface as several exception types
            torch.cuda.synchronize(self.device)
            self.stats.failure = f"{type(err).__name__}: {err}"[:300]
            self.log(f"step graph: recording failed, stepping eagerly: {self.stats.failure}")
            return None
        self._recorded[key] = _Recorded(static, graph, loss)
        self.stats.recorded += 1
        return self._recorded[key]

    def _replay(self, recorded: _Recorded, padded: Graph4MMInputs) -> Tensor:
        copy_batch_(recorded.inputs, padded)
        self.stats.replays += 1
        if recorded.graph is None:  # no CUDA: the same static inputs, run eagerly
            return self._body(recorded.inputs)
        recorded.graph.replay()
        assert recorded.loss is not None
        return recorded.loss


def _lm_columns(batch: Graph4MMInputs) -> int:
    """Prompt + target columns the LM runs over (the soft tokens add the same to both)."""
    assert batch.target_ids is not None
    return batch.batch_size * (batch.prompt_ids.shape[1] + batch.target_ids.shape[1])
