"""Training-step throughput: the project's real step beside the official-shaped step, one run.

Ours is the real thing: :class:`g4mm.model.Graph4MM` (hop-diffused adapter, MM-QFormer, the
raw layout of the real-data configs: 4 graph tokens per image, 5 images, written into slots
among the text) over an OPT-125M-shaped LM built from an ``OPTConfig`` with random weights (no
download), trained by :func:`g4mm.train.loop.train_loop` itself (pinned non-blocking batch
copies, bf16 autocast on CUDA, SDPA, the padding-free causal layout of ``Graph4MM.forward`` with
logits at target positions only, fused AdamW, clipping, the LR schedule), on cached node features
(12 text and 5 image nodes per sample). The baseline is ``official_shaped_step.py`` (the
official code's shapes: fp32, eager attention, the frozen text encoder and CLIP run every step,
everything padded to 1024 + 128), imported from ``--anchor`` and timed in the same process.

Sequence per sample: the raw layout's input (text with 5 runs of 4 graph-token slots spread
through it, as ``model.token_placement: at_images`` puts them at the images' captions) +
target; at most 1004 + 20 + 128 = 1152 tokens, the official step's 1024 input (slots
included) + 128 output tokens.

- ``full``: every sample at the maximum (1152 tokens: no padding anywhere, like-for-like with
  the official step, whose every sample is padded to 1152);
- ``variable``: prompts uniform in [128, 1004] tokens, targets uniform in [8, 128] (a stated
  assumption, not a measured WikiWeb2M distribution), batched by
  :func:`g4mm.data.collate.length_bucketed_batches` (``bucketed``) or at random (``random``).

``--step-graph`` adds the same rows with ``train.step_graph`` (the whole step recorded as one
CUDA graph per padded shape and replayed; every shape is recorded before the timed window, and
the note gives the padding this costs), and counts host syncs per replayed step on CUDA; on
CUDA also recorded rows with ``train.cudnn_attention`` (fixed shapes: cuDNN's plan per shape is
built once).

"frozen LM alone" rows (``bench/lm_alone.py``; ``--no-lm-alone`` skips them) time the LM's
share of a micro-step by itself, at the first batch size and full length: its forward, the
head and loss at the targets, and the input-gradient backward, with no adapter, packing or
optimizer, in the same variants (eager, compiled, CUDA graph, cuDNN attention). Its MFU is
the ceiling of the training-step rows' MFU at that shape.

Throughput counts real tokens only. FLOPs are counted per sample with n real tokens (prompt +
soft + target) of which t are targets, for an LM of width d, L layers, FFN width f, vocabulary
V; the LM is frozen, so its backward computes input gradients only (no weight gradients)::

    linear  = 2 L (4 d^2 + 2 d f) n      Q, K, V, O and the two FFN matmuls, forward
    attn    = 2 L n^2 d                  causal Q K^T and A V, forward (half of the n x n)
    head    = 2 d V t                    LM head at the target positions only, forward
    LM FLOPs = 2 linear + 3 attn + 2 head

(backward: dX = dY W^T costs one forward per matmul; attention backward dQ, dK, dV, dP costs
two; flash attention's recomputation is not counted). The adapter (<1 % of the FLOPs) is left
out. MFU = LM FLOP/s / the dense matmul rate measured in the same run: bf16 on CUDA (ours runs
under bf16 autocast), fp32 on CPU (everything runs in fp32 there). The official row uses the
same per-sample LM FLOPs (its extra encoder and padded-logit work is not useful work).

Usage:
    python bench/train_step.py [--anchor bench/anchors/official_shaped_step.py]
        [--batch 8 32] [--steps 20] [--compile] [--step-graph] [--json PATH]
    python bench/train_step.py --quick       # CPU-sized shapes, under a minute

The anchor is a verbatim copy of the project's ``shared/anchors/official_shaped_step.py`` in
``bench/anchors/`` (the default ``--anchor``; see its README).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    cpu_threads,
    device_label,
    gemm_tflops,
    load_path,
    matmul_tflops,
    pick_device,
    print_table,
    sync,
)
from lm_alone import LMAlone, fresh_dynamo, sdpa_kernel_name, time_lm_alone

from g4mm.config import COMPILE_MODES, CUDA_GRAPH_MODES, ExperimentConfig
from g4mm.data.collate import length_bucketed_batches
from g4mm.model import Graph4MM, build_adapter
from g4mm.model.inputs import Graph4MMInputs, ModalityInputs
from g4mm.train.host_syncs import audit_training_step
from g4mm.train.loop import frozen_dtype_for, train_loop
from g4mm.train.step_graph import GRAPH_WARMUP, graph_shape

DEFAULT_ANCHOR = Path(__file__).resolve().parent / "anchors" / "official_shaped_step.py"
HEADERS = [
    "step",
    "batch",
    "lengths",
    "samples/s",
    "real tok/s",
    "LM TFLOP/s",
    "MFU",
    "x official",
    "peak GiB",
    "note",
]


@dataclass(frozen=True)
class Shape:
    """LM, sequence and graph sizes; ``FULL`` is the paper's, ``QUICK`` the anchor's SMALL."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    input_tokens: int  # prompt + soft tokens (the official L_IN)
    target_tokens: int  # the official L_OUT
    text_nodes: int
    image_nodes: int
    queries: int  # soft tokens: 4 per image node
    adapter_hidden: int
    adapter_heads: int
    min_prompt: int
    min_target: int

    @property
    def max_prompt(self) -> int:
        return self.input_tokens - self.queries


FULL = Shape(50272, 768, 12, 12, 1024, 128, 12, 5, 20, 768, 12, 128, 8)
QUICK = Shape(1000, 64, 2, 4, 64, 16, 4, 2, 8, 64, 4, 8, 2)


def lm_config(shape: Shape):
    from transformers import OPTConfig

    return OPTConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        ffn_dim=4 * shape.hidden,
        num_attention_heads=shape.heads,
        max_position_embeddings=2048,
        word_embed_proj_dim=shape.hidden,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )


def lm_train_flops(config: Any, tokens: int, targets: int) -> float:
    """One sample's forward + input-gradient backward FLOPs through the frozen LM (module doc)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    linear = 2 * layers * (4 * d * d + 2 * d * config.ffn_dim) * tokens
    attention = 2 * layers * tokens**2 * d
    head = 2 * d * config.vocab_size * targets
    return 2 * linear + 3 * attention + 2 * head


def build_model(shape: Shape, device: torch.device, seed: int = 0) -> Graph4MM:
    from transformers import OPTForCausalLM

    torch.manual_seed(seed)
    lm = OPTForCausalLM._from_config(lm_config(shape), attn_implementation="sdpa")
    adapter = build_adapter(
        "hop_diffused",
        shape.hidden,
        shape.hidden,
        shape.hidden,
        context="raw",
        token_placement="at_images",
        tokens_per_image=shape.queries // shape.image_nodes,
        hidden_dim=shape.adapter_hidden,
        num_heads=shape.adapter_heads,
        alpha=0.1,
        num_hops=3,
        qformer_layers=1,
        dropout=0.1,
        diffusion_impl="dense",
    )
    return Graph4MM(lm, adapter).to(device)


def raw_slots(text: int, shape: Shape) -> list[int]:
    """One row's slot indices (-1 at text) in the raw layout's at_images shape: ``text`` text
    tokens with image j's ``k`` slots (soft tokens ``j k .. j k + k - 1``) after the j-th of
    ``image_nodes`` equal stretches of it."""
    k = shape.queries // shape.image_nodes
    row: list[int] = []
    bounds = [round(text * (j + 1) / shape.image_nodes) for j in range(shape.image_nodes)]
    start = 0
    for j, end in enumerate(bounds):
        row += [-1] * (end - start) + list(range(j * k, (j + 1) * k))
        start = end
    return row


def make_batch(prompts: list[int], targets: list[int], shape: Shape, gen) -> Graph4MMInputs:
    """A collated host batch as :class:`g4mm.data.collate.GraphCollator` lays it out: inputs
    (``prompts`` text tokens each, plus the slots of :func:`raw_slots`) left-padded, targets
    right-padded (each to the batch's longest), full node sets with random edges, random
    features and token ids."""
    rows = [raw_slots(p, shape) for p in prompts]
    b, width, t_width = len(prompts), max(map(len, rows)), max(targets)
    cols = torch.arange(width)
    prompt_mask = cols[None] >= (width - torch.tensor([len(r) for r in rows]))[:, None]
    slot_index = torch.full((b, width), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        slot_index[i, width - len(row) :] = torch.tensor(row)
    prompt_ids = torch.randint(4, shape.vocab, (b, width), generator=gen).masked_fill(
        ~prompt_mask, 1
    )
    target_mask = torch.arange(t_width)[None] < torch.tensor(targets)[:, None]
    target_ids = torch.randint(4, shape.vocab, (b, t_width), generator=gen).masked_fill(
        ~target_mask, 1
    )

    def modality(n: int) -> ModalityInputs:
        mask = torch.ones(b, n, dtype=torch.bool)
        adj = torch.rand(b, n, n, generator=gen) < 0.3
        adj = (adj | adj.transpose(1, 2)) & ~torch.eye(n, dtype=torch.bool)
        hops = torch.randint(0, 3, (b, n), generator=gen)
        return ModalityInputs(torch.randn(b, n, shape.hidden, generator=gen), mask, adj, hops)

    return Graph4MMInputs(
        prompt_ids,
        prompt_mask,
        modality(shape.text_nodes),
        modality(shape.image_nodes),
        target_ids,
        target_mask,
        slot_index=slot_index,
    )


def make_batches(kind: str, batch: int, count: int, shape: Shape, seed: int = 0):
    """``count`` host batches of lengths ``full`` or ``variable`` (``bucketed`` / ``random``)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "full":
        sizes = [([shape.max_prompt] * batch, [shape.target_tokens] * batch)] * count
    else:
        rng = random.Random(seed)
        pool = batch * count
        prompts = [rng.randint(shape.min_prompt, shape.max_prompt) for _ in range(pool)]
        targets = [rng.randint(shape.min_target, shape.target_tokens) for _ in range(pool)]
        window = 1 if kind == "random" else count
        lengths = [p + t for p, t in zip(prompts, targets, strict=True)]
        groups = length_bucketed_batches(lengths, batch, seed=seed, window=window)
        sizes = [([prompts[i] for i in g], [targets[i] for i in g]) for g in groups]
    return [make_batch(p, t, shape, gen) for p, t in sizes]


def step_config(
    steps: int,
    compile_lm: bool,
    scope: str = "lm",
    compile_mode: str = "default",
    step_graph: bool = False,
    cudnn: bool = False,
) -> ExperimentConfig:
    cfg = ExperimentConfig()
    t = cfg.train
    t.max_steps, t.eval_every, t.warmup_steps, t.grad_accum = steps, steps, 50, 1
    t.lr, t.weight_decay, t.betas, t.grad_clip = 1e-4, 0.01, (0.9, 0.95), 1.0
    t.precision, t.compile, t.compile_scope = "auto", compile_lm, scope
    t.compile_mode, t.step_graph, t.cudnn_attention = compile_mode, step_graph, cudnn
    return cfg


def steps_until_recorded(batches: list, pad_multiple: int, warmup: int = GRAPH_WARMUP) -> int:
    """Optimizer steps of ``itertools.cycle(batches)`` after which every padded shape has
    had its ``warmup`` eager steps and been recorded (so a timed window after it only
    replays)."""
    keys = [graph_shape(b, pad_multiple) for b in batches]
    need = Counter(dict.fromkeys(keys, warmup + 1))
    for step, key in enumerate(itertools.cycle(keys), start=1):
        need[key] -= 1
        if all(n <= 0 for n in need.values()):
            return step
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Plan:
    """One "ours" row: batch lengths, what is compiled, and the frozen LM's storage dtype
    (``auto`` = what training uses: bf16 on CUDA, fp32 on CPU)."""

    kind: str
    compile_lm: bool = False
    scope: str = "lm"
    frozen: str = "auto"
    compile_mode: str = "default"
    step_graph: bool = False
    cudnn: bool = False

    @property
    def name(self) -> str:
        name = "ours"
        if self.compile_lm:
            name += " + compile " + {"lm": "LM", "lm+adapter": "LM + adapter"}.get(
                self.scope, self.scope
            )
            if self.compile_mode != "default":
                name += f" ({self.compile_mode})"
        if self.step_graph:
            name += " + step graph"
        if self.cudnn:
            name += " + cuDNN attention"
        if self.frozen == "fp32":
            name += ", frozen LM fp32 (autocast casts)"
        return name


def time_ours(
    model: Graph4MM,
    batches: list,
    device: torch.device,
    steps: int,
    warmup: int,
    plan: Plan,
    profiler: torch.profiler.profile | None = None,
) -> dict[str, Any]:
    """Seconds of ``steps`` optimizer steps of ``train_loop`` (after ``warmup`` steps of a
    first ``train_loop`` call, which also compiles when asked), the frozen LM stored as
    training stores it (:func:`g4mm.train.loop.frozen_dtype_for`). A ``profiler`` is started
    with the clock and stopped after the last timed step (warm-up, compilation and recording
    stay out of it)."""
    notes: list[str] = []
    if plan.kind != "full":  # variable lengths: every batch timed equally often
        steps = math.ceil(steps / len(batches)) * len(batches)
    if plan.step_graph:  # every shape recorded before the timed window
        warmup = max(warmup, steps_until_recorded(batches, ExperimentConfig().train.step_graph_pad))
    marks: dict[str, float] = {}

    def clock(step: int) -> None:
        """Start after the warm-up's last step, stop after the last timed step (before the
        loop's closing evaluation and checkpoint, which are not a training step)."""
        if step == warmup:
            sync(device)
            if profiler is not None:
                profiler.start()
            marks["start"] = time.perf_counter()
        elif step == warmup + steps:
            sync(device)
            marks["end"] = time.perf_counter()
            if profiler is not None:
                profiler.stop()

    model.compile_parts(False)
    model.cast_frozen(frozen_dtype_for(device, "auto", plan.frozen))
    kernel = None
    if plan.cudnn:  # name the kernel SDPA picks: a tried-first backend may be passed over
        first = batches[0]
        if plan.step_graph:  # the width the recorded step runs at
            first = first.padded_to(*graph_shape(first, ExperimentConfig().train.step_graph_pad))
        width = first.prompt_ids.shape[1] + first.target_ids.shape[1]  # slots in the prompt
        kernel = f"SDPA {sdpa_kernel_name(model.lm, first.batch_size, width, cudnn=True)}"
    if plan.compile_lm:
        fresh_dynamo()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_loop(
        model=model,
        batches=itertools.cycle(batches),
        cfg=step_config(warmup + steps, plan.compile_lm, plan.scope, plan.compile_mode,
                        plan.step_graph, plan.cudnn),
        device=device,
        report=lambda metrics, state: None,
        log=notes.append,
        on_step=clock,
    )  # fmt: skip
    seconds = marks["end"] - marks["start"]
    used = list(itertools.islice(itertools.cycle(batches), warmup, warmup + steps))
    samples = sum(b.batch_size for b in used)
    real = [(int(b.prompt_mask.sum()), int(b.target_mask.sum())) for b in used]
    tokens = sum(p + t for p, t in real)  # the slots are real prompt columns
    flops = 0.0
    for b in used:
        n = (b.prompt_mask.sum(1) + b.target_mask.sum(1)).tolist()
        t = b.target_mask.sum(1).tolist()
        flops += sum(lm_train_flops(model.lm.config, k, j) for k, j in zip(n, t, strict=True))
    compiled = model.is_compiled
    note = [m for m in notes if "compile" in m or (m.startswith("step graph: ") and "graphs" in m)]
    note = [kernel, *note] if kernel else note
    model.compile_parts(False)
    model.cast_frozen(torch.float32)
    return {
        "seconds": seconds,
        "samples": samples,
        "tokens": tokens,
        "flops": flops,
        "padded_tokens": sum(
            b.batch_size * (b.prompt_ids.shape[1] + b.target_ids.shape[1]) for b in used
        ),
        "compiled": compiled,
        "note": "; ".join(note)[:120],
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
    }


def host_syncs_per_step(
    model: Graph4MM, batches: list, device: torch.device, step_graph: bool = False
) -> tuple[float, dict[str, float]] | None:
    """Host-device synchronisations per optimizer step of ``train_loop`` on CUDA, counted with
    ``torch.cuda.set_sync_debug_mode``: two runs, the second 4 steps longer, the difference / 4
    (each run's closing log line and report sync once by design; with ``step_graph`` both runs
    also pay their eager warm-up and recording, so the difference counts replayed steps). An
    uncounted run goes first: without it the H100 run of 2026-11-27 counted -0.25 per step
    (the first run synchronised once more, once per process: a first-use cost).
    Also returns where they happen: the Python line each sync warning points at, with its
    per-step count."""
    if device.type != "cuda":
        return None
    import warnings

    first = (
        steps_until_recorded(batches, ExperimentConfig().train.step_graph_pad) if step_graph else 2
    )
    sites = []
    for steps in (first, first, first + 4):
        sync(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_loop(
                    model=model, batches=itertools.cycle(batches),
                    cfg=step_config(steps, False, step_graph=step_graph), device=device,
                    report=lambda metrics, state: None, log=lambda _: None,
                )  # fmt: skip
            finally:
                torch.cuda.set_sync_debug_mode(0)
        sites.append(
            Counter(
                f"{Path(w.filename).name}:{w.lineno}"
                for w in caught
                if "synchroniz" in str(w.message)
            )
        )
    shorter, longer = sites[1:]
    per_step = {site: n / 4 for site, n in (longer - shorter).items()}
    return (sum(longer.values()) - sum(shorter.values())) / 4, per_step


def load_anchor(path: str | Path, quick: bool):
    """The official-shaped step module; SMALL=1 (its CPU shapes) under ``--quick``."""
    old = os.environ.get("SMALL")
    os.environ["SMALL"] = "1" if quick else "0"
    try:
        return load_path(path, "official_shaped_step")
    finally:
        if old is None:
            os.environ.pop("SMALL", None)
        else:
            os.environ["SMALL"] = old


def time_official(anchor, parts, batch: int, repeats: int, warmup: int) -> dict[str, Any]:
    """The anchor's own fp32 eager step (TF32 off, encoders every step) and its own timer."""
    anchor.B = batch  # the anchor reads its module-level B at call time
    torch.manual_seed(0)
    data = anchor.batch()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    if anchor.dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        seconds = anchor.timeit(lambda: anchor.step_official(parts, data), n=repeats, warm=warmup)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    peak = torch.cuda.max_memory_allocated() / 2**30 if anchor.dev == "cuda" else None
    return {"seconds": seconds, "peak_gib": peak}


def count_host_syncs(
    model: Graph4MM,
    sync_batches: list,
    device: torch.device,
    args: argparse.Namespace,
    meta: dict[str, Any],
) -> None:
    """The dispatcher audit of one step and, on CUDA, the sync debug mode's count per step
    (plain and, with ``--step-graph``, replayed), printed and stored in ``meta``."""
    audit = audit_training_step(model, sync_batches[0].to(device), device)
    meta["audited_syncs_per_step"] = audit.on(device.type)
    print(
        f"would-be host syncs in one training step (dispatcher audit, {device.type} tensors): "
        f"{audit.on(device.type)}" + ("" if not audit.count else f"\n{audit.report()}"),
        flush=True,
    )
    for graphed, suffix in (
        ((False, ""), (True, "_step_graph")) if args.step_graph else ((False, ""),)
    ):
        try:
            counted = host_syncs_per_step(model, sync_batches, device, step_graph=graphed)
        except Exception as err:  # a count that cannot run must not cost the table
            print(f"host sync count{suffix} failed: {type(err).__name__}: {err}"[:300])
            counted = None
        if counted is not None:
            meta["host_syncs_per_step" + suffix], meta["host_sync_sites" + suffix] = counted
            sites = ", ".join(f"{site} x{n:g}" for site, n in counted[1].items()) or "none"
            what = "replayed step graph" if graphed else "optimizer step"
            print(f"host syncs per {what} (cuda sync debug mode): {counted[0]:g} ({sites})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All rows (dicts) plus the run's metadata; ``main`` prints them as one table."""
    device = pick_device(args.device)
    cpu_threads(device, args.threads)
    shape = QUICK if args.quick else FULL
    config = lm_config(shape)
    max_tokens = shape.input_tokens + shape.target_tokens
    full_flops = lm_train_flops(config, max_tokens, shape.target_tokens)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_tflops(device, dtype, 8192 if device.type == "cuda" else 1024)
    # the LM's own matmuls at the first batch size, full length: (b L, d) @ (d, d) for Q, K,
    # V, O and (b L, d) @ (d, f), (b L, f) @ (f, d) for the FFN; a ceiling on MFU at this shape
    rows_m, d, f = args.batch[0] * max_tokens, config.hidden_size, config.ffn_dim
    gemm = {
        f"{rows_m}x{k}x{n}": gemm_tflops(device, dtype, rows_m, k, n, 20)
        for k, n in ((d, d), (d, f), (f, d))
    }
    meta = {
        "device": device_label(device),
        "peak_tflops": peak,
        "lm_gemm_tflops": gemm,
        "peak_dtype": str(dtype),
        "lm_flops_full_sample": full_flops,
        "shape": shape.__dict__,
    }
    print(
        f"device: {meta['device']}; measured {str(dtype)[6:]} matmul {peak:.1f} TFLOP/s; "
        f"LM FLOPs per full {max_tokens}-token sample {full_flops / 1e9:.2f} GFLOP"
    )

    rows: list[dict[str, Any]] = []
    official: dict[int, float] = {}
    if args.anchor:
        anchor = load_anchor(args.anchor, args.quick)
        if str(device) != anchor.dev:
            raise SystemExit(f"the anchor runs on {anchor.dev}, this bench on {device}")
        torch.manual_seed(0)
        parts = anchor.make("eager", torch.float32)
        for b in args.batch:
            try:
                res = time_official(anchor, parts, b, args.official_steps, 2 if args.quick else 3)
            except torch.OutOfMemoryError:
                rows.append({"step": "official-shaped fp32", "batch": b, "note": "OOM"})
                continue
            official[b] = b / res["seconds"]
            rows.append(
                {
                    "step": "official-shaped fp32",
                    "batch": b,
                    "lengths": f"padded {max_tokens}",
                    "samples_s": official[b],
                    "tokens_s": official[b] * max_tokens,
                    "tflops": official[b] * full_flops / 1e12,
                    "peak_gib": res["peak_gib"],
                    "note": "anchor's timeit (median of steps)",
                }
            )
            print(f"official b={b}: {official[b]:.1f} samples/s", flush=True)
        del parts
        if device.type == "cuda":
            torch.cuda.empty_cache()

    model = build_model(shape, device)
    if args.cudnn != "only":  # the cuDNN-only run (gpu_all's last section) counts nothing
        count_host_syncs(model, make_batches("full", args.batch[0], 2, shape), device, args, meta)
    variants = ["full", "bucketed", "random"] if args.variable else ["full"]
    for b in args.batch:
        plans = [Plan(kind) for kind in variants]
        if b == args.batch[0]:
            if args.compile:
                mode = args.compile_mode
                plans += [
                    Plan("full", compile_lm=True, compile_mode=mode),
                    Plan("full", True, scope="lm+adapter", compile_mode=mode),
                ]
                if mode not in CUDA_GRAPH_MODES:  # refused by config validation
                    plans.append(Plan("full", True, scope="forward", compile_mode=mode))
            if args.fp32_lm:
                plans.append(Plan("full", frozen="fp32"))
            if args.step_graph and args.compile and args.compile_mode not in CUDA_GRAPH_MODES:
                plans += [
                    Plan("full", True, scope, "auto", args.compile_mode, step_graph=True)
                    for scope in ("lm+adapter", "forward")
                ]
                if device.type == "cuda":  # fixed shapes: cuDNN's per-shape plan paid once
                    plans.append(Plan("full", True, "lm+adapter", "auto", args.compile_mode,
                                      step_graph=True, cudnn=True))  # fmt: skip
                if "bucketed" in variants:  # what the real-data configs run
                    plans.append(Plan("bucketed", True, "forward", "auto", args.compile_mode,
                                      step_graph=True))  # fmt: skip
        if args.step_graph:  # the whole step as one CUDA graph per padded shape
            plans += [Plan(kind, step_graph=True) for kind in variants]
            if device.type == "cuda" and b == args.batch[0]:
                kind = "bucketed" if "bucketed" in variants else "full"
                plans.append(Plan(kind, step_graph=True, cudnn=True))
        for plan in [plan for plan in plans if keeps(args.cudnn, plan)]:
            batches = make_batches(plan.kind, b, args.batches, shape)
            try:
                res = time_ours(model, batches, device, args.steps, args.warmup, plan)
            except Exception as err:  # one failing variant (a compile mode, OOM) is a row
                model.compile_parts(False)
                model.cast_frozen(torch.float32)
                note = f"failed: {type(err).__name__}: {err}"[:160]
                rows.append({"step": plan.name, "batch": b, "kind": plan.kind, "note": note})
                print(f"{plan.name} b={b} {plan.kind}: {note}", flush=True)
                continue
            samples_s = res["samples"] / res["seconds"]
            lengths = {
                "full": f"full {max_tokens}",
                "bucketed": "variable, bucketed",
                "random": "variable, random batches",
            }[plan.kind]
            fill = res["tokens"] / res["padded_tokens"] if plan.kind != "full" else None
            note = res["note"] or (f"{fill:.0%} of padded tokens real" if fill else "")
            if plan.compile_lm and not res["compiled"]:
                note = "compile FAILED, eager: " + note
            rows.append(
                {
                    "step": plan.name,
                    "batch": b,
                    "lengths": lengths,
                    "samples_s": samples_s,
                    "tokens_s": res["tokens"] / res["seconds"],
                    "tflops": res["flops"] / res["seconds"] / 1e12,
                    "peak_gib": res["peak_gib"],
                    "note": note,
                    "kind": plan.kind,
                    "compiled": res["compiled"],
                }
            )
            print(f"{plan.name} b={b} {plan.kind}: {samples_s:.1f} samples/s", flush=True)
            del batches
        if b == args.batch[0] and args.lm_alone:
            rows += lm_alone_rows(model, device, shape, b, args)
    for row in rows:
        if row.get("tflops") is not None:
            row["mfu"] = row["tflops"] / peak
        if (
            row["step"].startswith("ours")
            and official.get(row["batch"])
            and row.get("samples_s") is not None
        ):
            row["x_official"] = row["samples_s"] / official[row["batch"]]
    return {"meta": meta, "rows": rows}


def keeps(cudnn: str, plan: Plan | LMAlone) -> bool:
    """Whether ``--cudnn`` (off / also / only) keeps a row with or without cuDNN attention."""
    return {"off": not plan.cudnn, "also": True, "only": plan.cudnn}[cudnn]


def lm_alone_plans(
    device: torch.device, compile_lm: bool, step_graph: bool, cudnn: str = "also"
) -> list[LMAlone]:
    """The LM-alone rows matching the step rows asked for (graph and cuDNN rows on CUDA)."""
    plans = [LMAlone()]
    plans += [LMAlone(graphed=True), LMAlone(graphed=True, cudnn=True)] if step_graph else []
    if compile_lm:
        plans += [LMAlone(compile_lm=True)]
        plans += [LMAlone(True, graphed=True), LMAlone(True, True, True)] if step_graph else []
    return [plan for plan in plans if plan.runs_on(device) and keeps(cudnn, plan)]


def lm_alone_rows(
    model: Graph4MM, device: torch.device, shape: Shape, batch: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Rows of the frozen LM's work alone at full length (``bench/lm_alone.py``): the MFU
    ceiling the training-step rows of the same batch are measured against."""
    tokens, targets = shape.input_tokens + shape.target_tokens, shape.target_tokens
    flops = batch * lm_train_flops(model.lm.config, tokens, targets)
    rows = []
    for plan in lm_alone_plans(device, args.compile, args.step_graph, args.cudnn):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            res = time_lm_alone(model, device, batch, tokens, targets, args.steps, args.warmup,
                                plan)  # fmt: skip
        except Exception as err:  # a failing variant (cuDNN, a recording) is a row
            note = f"failed: {type(err).__name__}: {err}"[:160]
            rows.append({"step": plan.name, "batch": batch, "kind": "lm alone", "note": note})
            print(f"{plan.name} b={batch}: {note}", flush=True)
            continue
        rate = res["samples"] / res["seconds"]
        rows.append(
            {
                "step": plan.name,
                "batch": batch,
                "lengths": f"full {tokens}",
                "samples_s": rate,
                "tokens_s": rate * tokens,
                "tflops": flops / res["seconds"] / 1e12,
                "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30
                if device.type == "cuda"
                else None,
                "note": f"LM fwd + input-grad bwd only (no adapter, packing, update); "
                f"SDPA {res['attention']}",
                "kind": "lm alone",
            }
        )
        print(f"{plan.name} b={batch}: {rate:.1f} samples/s", flush=True)
    return rows


def table_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    def pct(v):
        return None if v is None else f"{v:.1%}"

    def times(v):
        return None if v is None else f"x{v:.1f}"

    return [
        [
            r["step"],
            r["batch"],
            r.get("lengths"),
            r.get("samples_s"),
            r.get("tokens_s"),
            r.get("tflops"),
            pct(r.get("mfu")),
            times(r.get("x_official")),
            r.get("peak_gib"),
            r.get("note", ""),
        ]
        for r in rows
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized shapes (the anchor's SMALL)")
    p.add_argument(
        "--anchor",
        default=str(DEFAULT_ANCHOR),
        help="official_shaped_step.py; '' skips the official rows",
    )
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 8 32; quick 2 8)")
    p.add_argument(
        "--steps", type=int,
        help="timed optimizer steps (default 20; quick 8); variable-length rows round up to "
        "whole --batches cycles",
    )  # fmt: skip
    p.add_argument("--warmup", type=int, help="warm-up steps (default 3; quick 1)")
    p.add_argument("--official-steps", type=int, help="anchor timeit steps (default 10; quick 3)")
    p.add_argument("--batches", type=int, default=16, help="distinct batches cycled through")
    p.add_argument(
        "--no-variable", dest="variable", action="store_false", help="only the full-length rows"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="add torch.compile rows: LM, LM + adapter (1st batch)",
    )
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=COMPILE_MODES,
        help="torch.compile mode of the compile rows (reduce-overhead = CUDA graphs)",
    )
    p.add_argument(
        "--step-graph",
        action="store_true",
        help="add rows with train.step_graph (the whole step replayed as a CUDA graph; on CPU "
        "the same static-input steps run eagerly)",
    )
    p.add_argument(
        "--cudnn",
        choices=["off", "also", "only"],
        default="also",
        help="rows with train.cudnn_attention (CUDA only): beside the others (also), none "
        "(off), or just those (only: gpu_all runs them last, apart from the rest)",
    )
    p.add_argument("--no-fp32-lm", action="store_true", help="skip the frozen-LM-fp32 row")
    p.add_argument(
        "--fp32-lm",
        action="store_true",
        help="add a row with the frozen LM kept in fp32 under autocast (1st batch; CUDA default)",
    )
    p.add_argument(
        "--no-lm-alone",
        dest="lm_alone",
        action="store_false",
        help="skip the frozen-LM-alone rows (the LM work without adapter or update, 1st batch)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: see common)")
    p.add_argument("--json", type=Path, help="also write rows + metadata here")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    args.batch = args.batch or ([2, 8] if quick else [8, 32])
    args.steps = args.steps or (8 if quick else 20)
    args.warmup = args.warmup or (1 if quick else 3)
    args.official_steps = args.official_steps or (3 if quick else 10)
    on_cuda = torch.cuda.is_available() and args.device != "cpu"
    args.fp32_lm = (args.fp32_lm or on_cuda) and not args.no_fp32_lm
    if quick:
        args.batches = min(args.batches, 4)
    return args


def main(argv: list[str] | None = None) -> int:
    args = resolve(parser().parse_args(argv))
    result = run(args)
    print_table(HEADERS, table_rows(result["rows"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
