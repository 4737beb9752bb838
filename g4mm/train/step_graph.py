"""The whole training step as CUDA graphs (``train.step_graph``).

At batch 8 of the paper's shapes one H100 finishes a step's kernels faster than the host can
launch them (bench/RESULTS.md: ~1,000 launches per step, the host busy 55 ms against 18 ms of
device work). Recording the step once and replaying it removes the per-kernel launch cost.
A step is two kinds of recorded pieces, so that gradient accumulation works too:

    micro(batch) = copy batch -> static inputs;  graph[padded shape]: forward (autocast)
                   -> loss -> (loss / grad_accum).backward(), accumulating into the gradients
    update()     = graph: clip grad norm -> fused AdamW -> zero the gradients in place

    step(micro-batches) = micro(b_1) ... micro(b_grad_accum); update()

Requirements, all held by :func:`g4mm.train.loop.train_loop`'s step: fixed shapes (each batch
is padded up to a multiple of ``pad_multiple`` prompt / target columns, which changes no loss
or gradient, and one micro graph is recorded per padded shape), no host synchronisation inside
the step (``tests/test_host_syncs.py``), an optimizer that keeps its step counts and learning
rate on the device (``capturable``, the scheduler writing the lr tensor in place), gradients
that stay allocated (zeroed in place, never set to None). Every piece runs ``warmup`` times
eagerly (a side stream on CUDA) before it is recorded, and those are real training work;
a recording failure falls back to eager pieces, logged once. Without CUDA the same
static-input path runs eagerly (what the CPU tests check against the plain step).

Data-parallel runs never wrap the adapter in DDP (its gradient hooks launch collectives
during backward, which a recording cannot hold, and its reducer keeps autograd nodes that
invalidate the capture even when bypassed) and pass ``grad_sync``
(:class:`g4mm.train.grad_sync.GradientAllReduce`), which averages the gradients over the
ranks eagerly between the last micro-step and the update:

    step(micro-batches) = micro(b_1) ... micro(b_grad_accum); grad_sync(); update()
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
from g4mm.train.transfer import copy_batch_, to_device

#: Eager runs of a piece (a padded shape's micro-step, the update) before it is recorded.
GRAPH_WARMUP = 2
_UPDATE = "update"  # the key of the optimizer-update piece


def graph_shape(batch: Graph4MMInputs, multiple: int) -> tuple[int, int]:
    """``(prompt width, target width)`` of ``batch`` rounded up to multiples of ``multiple``."""
    assert batch.target_ids is not None, "a training batch has targets"

    def up(width: int) -> int:
        return max(multiple, math.ceil(width / multiple) * multiple)

    return up(batch.prompt_ids.shape[1]), up(batch.target_ids.shape[1])


def shape_key(batch: Graph4MMInputs) -> tuple[tuple[int, ...], ...]:
    """The shapes a recorded micro-step is specialised to (every input tensor's)."""
    return tuple(tuple(t.shape) for t in batch.tensors())


@dataclass
class _Recorded:
    """A recorded piece: its static inputs (micro-steps), and on CUDA the graph and its loss
    output (micro-steps)."""

    inputs: Graph4MMInputs | None = None
    graph: torch.cuda.CUDAGraph | None = None
    loss: Tensor | None = None


@dataclass
class StepGraphStats:
    """Counts for the log: pieces recorded, replayed and run eagerly, padding, a failure."""

    recorded: int = 0
    replays: int = 0
    eager: int = 0
    failure: str | None = None
    padded_tokens: int = 0
    batch_tokens: int = 0

    def summary(self) -> str:
        extra = self.padded_tokens / max(1, self.batch_tokens) - 1
        text = (
            f"step graph: {self.recorded} graphs recorded, {self.replays} replays, "
            f"{self.eager} eager runs, padding +{extra:.1%} LM tokens"
        )
        return text + (f"; recording failed: {self.failure}" if self.failure else "")


@dataclass
class GraphedTrainStep:
    """``step(micro_batches) -> loss``: one optimizer step over host micro-batches, each piece
    replayed from a CUDA graph once it has run ``warmup`` times eagerly (see the module doc).

    Args:
        model: the Graph4MM model (train mode); ``params``: the parameters to clip;
        optimizer: built with ``capturable=True`` and its lr stored as a tensor
            (:func:`g4mm.train.optim.build_optimizer`, :func:`g4mm.train.optim.store_lr`);
        autocast: a context-manager factory (the training precision's autocast);
        grad_accum: micro-batches per optimizer step (each loss is divided by it);
        grad_clip: max gradient norm (0: no clipping);
        pad_multiple: prompt and target widths are rounded up to multiples of this;
        warmup: eager runs per piece before it is recorded (lazy initialisation, cuBLAS
            workspaces and optimizer state must not be created during recording);
        max_graphs: micro-step shapes recorded at most; later new shapes run eagerly;
        grad_sync: called between the micro-steps and the update (data-parallel runs:
            the gradient average over the ranks), or None.

    Returns (per call): the mean loss of the micro-batches, a 0-dim device tensor.
    """

    model: Any
    optimizer: torch.optim.Optimizer
    params: list[Tensor]
    autocast: Callable[[], contextlib.AbstractContextManager]
    grad_accum: int = 1
    grad_clip: float = 1.0
    pad_multiple: int = 64
    warmup: int = GRAPH_WARMUP
    max_graphs: int = 64
    log: Callable[[str], None] = print
    grad_sync: Callable[[], None] | None = None
    stats: StepGraphStats = field(default_factory=StepGraphStats, init=False)
    _recorded: dict[Any, _Recorded] = field(default_factory=dict, init=False, repr=False)
    _seen: Counter = field(default_factory=Counter, init=False, repr=False)

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
        # recordings run on a stream of our own on the parameters' device (torch's default
        # capture stream is made on the current device, which need not be ours)
        self._capture = torch.cuda.Stream(self.device) if self.on_cuda else None
        # one memory pool for all graphs: the pieces replay one after another, never at once
        self._pool = torch.cuda.graph_pool_handle() if self.on_cuda else None

    def __call__(self, micro_batches: list[Graph4MMInputs]) -> Tensor:
        if len(micro_batches) != self.grad_accum:
            raise ValueError(f"{len(micro_batches)} micro-batches for grad_accum {self.grad_accum}")
        total = torch.zeros((), device=self.device)
        for batch in micro_batches:
            total += self._micro(batch)  # queued before the next replay overwrites the loss
        if self.grad_sync is not None:
            self.grad_sync()
        self._run(_UPDATE, None)
        return total / self.grad_accum

    # ---- the two pieces -------------------------------------------------------------------
    def _micro_body(self, inputs: Graph4MMInputs) -> Tensor:
        """Forward, loss, backward into the accumulated gradients; the (unscaled) loss."""
        with self.autocast():
            loss = self.model(inputs).loss
        (loss / self.grad_accum).backward()
        return loss.detach()

    def _update_body(self, _: None = None) -> None:
        """Clip, optimizer step, zero the gradients in place for the next step."""
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)

    def _micro(self, batch: Graph4MMInputs) -> Tensor:
        padded = batch.padded_to(*graph_shape(batch, self.pad_multiple))
        self.stats.batch_tokens += _lm_columns(batch)
        self.stats.padded_tokens += _lm_columns(padded)
        return self._run(shape_key(padded), padded)

    # ---- eager, record, replay ------------------------------------------------------------
    def _run(self, key: Any, padded: Graph4MMInputs | None) -> Tensor | None:
        """Run piece ``key`` (a micro-step shape, or the update when ``padded`` is None):
        replayed when recorded, recorded after ``warmup`` eager runs, else eager."""
        recorded = self._recorded.get(key)
        if recorded is None:
            self._seen[key] += 1
            micro_shapes = len(self._recorded) - (_UPDATE in self._recorded)
            if (
                self._seen[key] > self.warmup
                and (padded is None or micro_shapes < self.max_graphs)
                and self.stats.failure is None
            ):
                recorded = self._record(key, padded)
        if recorded is not None:
            return self._replay(recorded, padded)
        self.stats.eager += 1
        return self._eager(padded)

    def _body(self, inputs: Graph4MMInputs | None) -> Tensor | None:
        return self._update_body() if inputs is None else self._micro_body(inputs)

    def _eager(self, padded: Graph4MMInputs | None) -> Tensor | None:
        """An eager run; on CUDA on a side stream, as recording requires of warm-up work."""
        inputs = None if padded is None else to_device(padded, self.device)
        if self._side is None:
            return self._body(inputs)
        self._side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._side):
            out = self._body(inputs)
        torch.cuda.current_stream(self.device).wait_stream(self._side)
        return out

    def _record(self, key: Any, padded: Graph4MMInputs | None) -> _Recorded | None:
        """Static inputs for a micro-step and, on CUDA, the recorded piece; None if
        recording failed (logged; nothing more is recorded)."""
        static = None
        if padded is not None:  # never aliased with the host batch
            static = padded.map_tensors(lambda t: t.to(self.device, copy=True))
        if not self.on_cuda:
            self._recorded[key] = _Recorded(static)
            self.stats.recorded += 1
            return self._recorded[key]
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize(self.device)
            # the outer context restores the current stream even when the capture fails: a
            # failing capture_end leaves torch.cuda.graph's own stream context unexited
            with (
                torch.cuda.stream(self._capture),
                torch.cuda.graph(graph, pool=self._pool, stream=self._capture),
            ):
                loss = self._body(static)
        except Exception as err:  # capture errors surface as several exception types
            torch.cuda.synchronize(self.device)
            self.stats.failure = f"{type(err).__name__}: {err}"[:300]
            self.log(f"step graph: recording failed, running eagerly: {self.stats.failure}")
            return None
        self._recorded[key] = _Recorded(static, graph, loss)
        self.stats.recorded += 1
        return self._recorded[key]

    def _replay(self, recorded: _Recorded, padded: Graph4MMInputs | None) -> Tensor | None:
        if padded is not None:
            assert recorded.inputs is not None
            copy_batch_(recorded.inputs, padded)
        self.stats.replays += 1
        if recorded.graph is None:  # no CUDA: the same static inputs, run eagerly
            return self._body(recorded.inputs)
        recorded.graph.replay()
        return recorded.loss


def _lm_columns(batch: Graph4MMInputs) -> int:
    """Prompt + target columns the LM runs over (the soft tokens add the same to both)."""
    assert batch.target_ids is not None
    return batch.batch_size * (batch.prompt_ids.shape[1] + batch.target_ids.shape[1])
