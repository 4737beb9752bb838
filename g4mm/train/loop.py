"""The framework-agnostic training loop (one process; DDP-aware through two small hooks).

Runs the same in a Ray Train worker (``g4mm.train.ray_train``) and in a plain process
(``g4mm.train.local``). Per optimizer step: ``grad_accum`` micro-batches (DDP gradient sync
skipped on all but the last through ``no_sync``), bf16 autocast on CUDA, gradient clipping on the
adapter, AdamW (fused on CUDA) + warmup/cosine. Batches go to the GPU from pinned memory without
blocking, and the loss stays on the device between log lines: no per-step host
synchronisation. ``train.compile`` runs the frozen LM body (or, by ``train.compile_scope``, more
of the step) through ``torch.compile``, falling back to eager when compiling fails.
``train.step_graph`` records the whole step (forward to optimizer) as a CUDA graph per padded
batch shape and replays it (:mod:`g4mm.train.step_graph`). On CUDA, attention runs without
SDPA's cuDNN backend (see :data:`TRAINING_SDPA_BACKENDS`) unless ``train.cudnn_attention``
asks to try it first (:func:`training_sdpa`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

from g4mm.config import CUDA_GRAPH_MODES
from g4mm.model.inputs import Graph4MMInputs
from g4mm.train.checkpoint import training_state
from g4mm.train.grad_sync import GradientAllReduce, world_size
from g4mm.train.optim import build_optimizer, build_scheduler, lr_of_last_step, store_lr
from g4mm.train.step_graph import GraphedTrainStep, graph_shape
from g4mm.train.transfer import to_device

Report = Callable[[dict[str, Any], dict[str, Any] | None], None]


@functools.cache
def native_bf16(index: int | None) -> bool:
    """Whether CUDA device ``index`` (None: the current one) computes bf16 natively, asked
    once per device (autocast is entered every micro-step)."""
    if index is None:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    with torch.cuda.device(index):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def uses_bf16(device: torch.device, precision: str) -> bool:
    """Whether steps run under bf16 autocast (``train.precision``): ``auto`` on a CUDA device
    with native bf16 (Ampere and later; emulation does not count), ``bf16`` likewise but
    demanded, ``fp32`` never.

    Raises:
        ValueError: ``bf16`` asked for on a device without native bf16 (the CPU, a V100).
    """
    if precision == "fp32":
        return False
    native = device.type == "cuda" and native_bf16(torch.device(device).index)
    if precision == "bf16" and not native:
        raise ValueError(
            f"train.precision = 'bf16' needs a CUDA device with native bf16; this run's device "
            f"is {device}: use 'auto' (bf16 where native, else fp32) or 'fp32'"
        )
    return native


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast where :func:`uses_bf16`; else nothing (fp32)."""
    if uses_bf16(device, precision):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def frozen_dtype_for(device: torch.device, precision: str, frozen_dtype: str) -> torch.dtype:
    """Storage dtype of the frozen backbones (``train.frozen_dtype``): ``auto`` is bf16 exactly
    when the step runs under bf16 autocast (:func:`uses_bf16`), where autocast would cast
    every fp32 weight to bf16 in every forward anyway; else fp32."""
    if frozen_dtype == "bf16":
        return torch.bfloat16
    if frozen_dtype == "auto" and uses_bf16(device, precision):
        return torch.bfloat16
    return torch.float32


#: SDPA kernels training may use (``torch.nn.attention.sdpa_kernel``): all but cuDNN's. cuDNN
#: attention builds an execution graph for every new sequence shape, and with real variable
#: lengths nearly every batch is a new shape: on one H100 (OPT-125M shape, batch 8, bucketed
#: lengths, bench/gpu/profile_step.py) a step took 118 ms with it and 43 ms without; at one fixed
#: length it was 5-19 % faster, which training never sees.
TRAINING_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                          SDPBackend.MATH]  # fmt: skip


def training_sdpa(cudnn: bool = False) -> contextlib.AbstractContextManager:
    """The SDPA kernels of a training step (``train.cudnn_attention``): those of
    :data:`TRAINING_SDPA_BACKENDS`, or cuDNN attention tried first and then those. With
    ``train.step_graph`` every shape is fixed and recorded once, so cuDNN's per-shape plan is
    paid once per recorded shape, not per batch."""
    if not cudnn:
        return sdpa_kernel(TRAINING_SDPA_BACKENDS)
    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, *TRAINING_SDPA_BACKENDS], set_priority=True)


def compile_or_fallback(
    model: Any,
    batch: Graph4MMInputs,
    device: torch.device,
    precision: str,
    log: Callable,
    scope: str = "lm",
    mode: str = "default",
) -> bool:
    """Compile ``scope`` of ``model`` (see :meth:`g4mm.model.Graph4MM.compile_parts`) in ``mode``
    and run one forward + backward on ``batch`` to find out now whether it works; on any error
    go back to eager. The probe's gradients are discarded. Returns whether the model stays
    compiled."""
    model.compile_parts(True, scope=scope, mode=mode)
    try:
        mark_step_begin(mode)
        with autocast_for(device, precision):
            out = model(to_device(batch, device))
        out.loss.backward()
    except Exception as err:  # compile failures surface as many exception types
        model.compile_parts(False)
        log(f"torch.compile failed, training eagerly: {type(err).__name__}: {err}"[:500])
        return False
    finally:
        model.zero_grad(set_to_none=True)
    log(f"torch.compile: {scope} compiled (mode {mode})")
    return True


def mark_step_begin(compile_mode: str) -> None:
    """Tell CUDA-graph compile modes that a new iteration starts, so the previous step's graph
    outputs may be overwritten (no-op for the other modes)."""
    if compile_mode in CUDA_GRAPH_MODES:
        torch.compiler.cudagraph_mark_step_begin()


def real_tokens(batch: Graph4MMInputs) -> int:
    """Real prompt + target tokens of a host batch (counted on the host copy: reading them
    off the device would synchronise every step)."""
    return int(batch.target_mask.sum()) + int(batch.prompt_mask.sum())


def use_step_graph(
    train_cfg: Any, device: torch.device, data_parallel: bool, log: Callable
) -> bool:
    """Whether this run records its steps as CUDA graphs (``train.step_graph``). Without CUDA
    the same static-input step runs eagerly (logged). Data-parallel runs average gradients
    outside the recorded pieces (:mod:`g4mm.train.grad_sync`; logged)."""
    if not getattr(train_cfg, "step_graph", False):
        return False
    if data_parallel:
        log("step graph: data-parallel: gradients averaged by one all-reduce per step, outside DDP")
    if device.type != "cuda":
        log(f"step graph: no CUDA on {device}; the same static-input steps run eagerly")
    return True


def is_data_parallel(model: Any, train_cfg: Any, no_sync: Callable | None) -> bool:
    """Whether gradients must be averaged over ranks, after checking the adapter is set up
    for the way this run steps: plain steps average through DDP (``no_sync`` given), recorded
    steps through :class:`GradientAllReduce`, with the adapter never wrapped in DDP
    (:mod:`g4mm.train.grad_sync` says why).

    Raises:
        ValueError: a DDP-wrapped adapter with ``train.step_graph``; several ranks but
            neither DDP nor the step graph (each rank would train its own replica).
    """
    graphed = bool(getattr(train_cfg, "step_graph", False))
    if graphed and isinstance(model.adapter, DistributedDataParallel):
        raise ValueError(
            "train.step_graph: pass the bare adapter, not a DDP wrapper (the recorded steps "
            "average gradients themselves, and DDP's reducer breaks CUDA-graph capture; "
            "g4mm.train.grad_sync.broadcast_module gives every rank rank 0's weights)"
        )
    ranks = world_size()
    if ranks > 1 and not graphed and no_sync is None:
        raise ValueError(
            f"{ranks} ranks train without DDP: wrap the adapter (ray.train.torch.prepare_model) "
            "and pass its no_sync, or set train.step_graph"
        )
    return no_sync is not None or ranks > 1


@contextlib.contextmanager
def adapter_without_ddp(model: Any, enabled: bool) -> Iterator[None]:
    """Inside the block ``model.adapter`` is the bare adapter rather than its DDP wrapper
    (when ``enabled``); restored on the way out, errors included."""
    if not enabled:
        yield
        return
    wrapped, model.adapter = model.adapter, model.bare_adapter
    try:
        yield
    finally:
        model.adapter = wrapped


def has_trainable_parameters(model: Any) -> bool:
    """Whether the optimizer would have anything to train (``model.parameter_groups``: the
    adapter's; ``text_only`` under the raw layout has none, the frozen LM reads the raw text
    alone)."""
    return any(p.requires_grad for group in model.parameter_groups(0.0) for p in group["params"])


def _evaluate_untrained(
    model: Any,
    batches: Iterator[Graph4MMInputs],
    cfg: Any,
    device: torch.device,
    report: Report,
    evaluate: Callable[[], dict[str, float]] | None,
    is_main: bool,
    log: Callable[[str], None],
    collate_counts: Callable[[], dict[str, int]] | None,
) -> list[dict[str, Any]]:
    """:func:`train_loop` for an adapter without parameters: no step to take; one report
    at step 0 with the frozen model's loss on one training batch and its validation metrics."""
    if is_main:
        log(
            f"nothing to train: variant {cfg.model.variant!r} under context "
            f"{cfg.model.context!r} has no trainable parameter; evaluating the frozen model"
        )
    start = time.perf_counter()
    model.eval()
    with torch.no_grad(), autocast_for(device, cfg.train.precision):
        loss = model(to_device(next(batches), device)).loss.item()
    metrics: dict[str, Any] = {
        "step": 0, "train_loss": loss, "samples_per_s": 0.0, "lr": 0.0,
        "resumed_from_step": 0, "elapsed_s": time.perf_counter() - start,
    }  # fmt: skip
    if is_main and evaluate is not None:
        metrics.update({f"val_{k}": v for k, v in evaluate().items()})
    if collate_counts is not None:
        metrics.update(collate_counts())
    history = [metrics]
    state = training_state(model, None, None, 0, cfg, history) if is_main else None
    report(metrics, state)
    return history


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def train_loop(
    *,
    model: Any,
    batches: Iterator[Graph4MMInputs],
    cfg: Any,
    device: torch.device,
    report: Report,
    evaluate: Callable[[], dict[str, float]] | None = None,
    resume: dict[str, Any] | None = None,
    is_main: bool = True,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    log: Callable[[str], None] = print,
    log_every: int = 10,
    on_report: Callable[[int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    collate_counts: Callable[[], dict[str, int]] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model``'s adapter for ``cfg.train.max_steps`` optimizer steps.

    Args:
        batches: an endless iterator of CPU batches (the caller cycles epochs).
        report: called at every evaluation with the metrics and, on the main process, the
            training state to checkpoint (see :func:`g4mm.train.checkpoint.training_state`).
        evaluate: validation metrics (called on the main process only).
        resume: a loaded checkpoint to continue from (its adapter already restored).
        no_sync: the DDP module's ``no_sync`` when data-parallel through DDP, else None
            (data-parallel step-graph runs pass the bare adapter and no ``no_sync``: see
            :func:`is_data_parallel`).
        on_report: called with the step after each report (fault-injection hook for tests).
        on_step: called with the step after each optimizer step is queued (benchmark timing).
        collate_counts: called at every evaluation on every process (it may be a collective):
            the collator's counts since the last call (nodes masked for a missing feature,
            nodes cut by the caps; :func:`g4mm.train.components.collate_counter`), added to
            the metrics and logged when any is non-zero.

    Returns:
        The history: one metrics dict per evaluation (from the start, across resumes).
    """
    train_cfg = cfg.train
    if not has_trainable_parameters(model):
        return _evaluate_untrained(
            model, batches, cfg, device, report, evaluate, is_main, log, collate_counts
        )
    data_parallel = is_data_parallel(model, train_cfg, no_sync)
    graphed = use_step_graph(train_cfg, device, data_parallel=data_parallel, log=log)
    optimizer = build_optimizer(model, train_cfg, device, capturable=graphed)
    scheduler = build_scheduler(optimizer, train_cfg)
    step, history, curve = 0, [], []
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        step, history = int(resume["step"]), list(resume["history"])
        log(f"resumed from step {step}")
    store_lr(optimizer, as_tensor=graphed)
    resumed_from = step
    params = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    attention = training_sdpa(getattr(train_cfg, "cudnn_attention", False))
    with attention:
        if getattr(train_cfg, "compile", False):
            first = next(batches)
            batches = itertools.chain([first], batches)
            # probe at the shape the steps will run: recorded steps run padded batches, and a
            # second length would make dynamo compile the LM for every length (dynamic shapes)
            probe = (
                first.padded_to(*graph_shape(first, train_cfg.step_graph_pad)) if graphed else first
            )
            compile_or_fallback(
                model, probe, device, train_cfg.precision, log,
                train_cfg.compile_scope, train_cfg.compile_mode,
            )  # fmt: skip
        compile_mode = train_cfg.compile_mode if getattr(train_cfg, "compile", False) else "default"
        step_graph = None
        if graphed:
            step_graph = GraphedTrainStep(
                model, optimizer, params,
                autocast=lambda: autocast_for(device, train_cfg.precision),
                grad_accum=train_cfg.grad_accum, grad_clip=train_cfg.grad_clip,
                pad_multiple=train_cfg.step_graph_pad, log=log,
                grad_sync=GradientAllReduce(params) if data_parallel else None,
            )  # fmt: skip
        window_loss = torch.zeros((), device=device)
        window_steps = window_samples = window_tokens = 0
        window_start = run_start = time.perf_counter()
        paced_from: tuple[int, float] | None = None  # (step, time) of the first log line
        while step < train_cfg.max_steps:
            if step_graph is not None:  # the whole step, replayed once recorded
                micro_batches = [next(batches) for _ in range(train_cfg.grad_accum)]
                window_tokens += sum(map(real_tokens, micro_batches))
                window_samples += sum(b.batch_size for b in micro_batches)
                window_loss += step_graph(micro_batches)
            else:
                optimizer.zero_grad(set_to_none=True)
                for micro in range(train_cfg.grad_accum):
                    batch = next(batches)
                    window_tokens += real_tokens(batch)
                    inputs = to_device(batch, device)
                    mark_step_begin(compile_mode)
                    last = micro == train_cfg.grad_accum - 1
                    skip_sync = no_sync is not None and not last
                    with no_sync() if skip_sync else contextlib.nullcontext():
                        with autocast_for(device, train_cfg.precision):
                            out = model(inputs)
                        (out.loss / train_cfg.grad_accum).backward()
                    window_loss += out.loss.detach() / train_cfg.grad_accum
                    window_samples += inputs.batch_size
                if train_cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
                optimizer.step()
            scheduler.step()
            step += 1
            window_steps += 1
            if on_step is not None:
                on_step(step)

            at_eval = step % train_cfg.eval_every == 0 or step == train_cfg.max_steps
            if (step % log_every == 0 or at_eval) and window_steps:
                elapsed = time.perf_counter() - window_start
                loss = window_loss.item() / window_steps  # the only host sync, once per log line
                rate = window_samples / max(elapsed, 1e-9)
                if paced_from is None:  # the first window holds start-up (compile, first batch)
                    paced_from = (step, time.perf_counter())
                    eta = (train_cfg.max_steps - step) * elapsed / window_steps
                else:  # the pace since then, evaluations and epoch starts included: steady
                    paced_steps, paced_start = step - paced_from[0], paced_from[1]
                    per_step = (time.perf_counter() - paced_start) / paced_steps
                    eta = (train_cfg.max_steps - step) * per_step
                if is_main:
                    log(
                        f"step {step}/{train_cfg.max_steps} loss {loss:.4f} "
                        f"{rate:.1f} samples/s {window_tokens / max(elapsed, 1e-9):.0f} tok/s "
                        f"lr {lr_of_last_step(scheduler):.2e} eta {format_eta(eta)}"
                    )
                last_loss, last_rate = loss, rate
                curve.append([step, loss])
                window_loss.zero_()
                window_steps = window_samples = window_tokens = 0
                window_start = time.perf_counter()
            if at_eval:
                metrics: dict[str, Any] = {
                    "step": step,
                    "train_loss": last_loss,
                    "samples_per_s": last_rate,
                    "lr": lr_of_last_step(scheduler),
                    "resumed_from_step": resumed_from,
                    "elapsed_s": time.perf_counter() - run_start,
                }
                if is_main and evaluate is not None:
                    model.eval()
                    metrics.update({f"val_{k}": v for k, v in evaluate().items()})
                    model.train()
                if collate_counts is not None:
                    counts = collate_counts()
                    metrics.update(counts)
                    if is_main and any(counts.values()):
                        log(f"step {step}: collated batches since the last report: {counts}")
                # the history (run directory, checkpoints) keeps every logged train loss since the
                # last evaluation for loss.png; the report keeps scalars only
                history.append({**metrics, "train_curve": curve})
                curve = []
                state = None
                if is_main:
                    state = training_state(model, optimizer, scheduler, step, cfg, history)
                report(metrics, state)
                if on_report is not None:
                    on_report(step)
    if step_graph is not None:
        log(step_graph.stats.summary())
    return history
