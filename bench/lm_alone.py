"""The frozen LM's work alone, at the training step's shapes: the MFU ceiling of "LM work".

One micro-step spends this inside the frozen LM (``Graph4MM.forward`` and its backward)::

    logits = Graph4MM.packed_target_logits(E, p)   E (B, L, D) packed embeddings, p (B, T)
    loss   = target_loss(logits, y, m)             fp32 cross-entropy at the T targets
    dE     = d loss / d E                          input-gradient backward, no weight gradients

Timed here without the adapter, the packing gathers, clipping or the optimizer, at full length
(L = 1,152 at the paper's shapes, every token real). Its FLOPs are exactly the LM FLOPs the
training-step rows count (``train_step.lm_train_flops``), so its MFU bounds theirs from above:
the gap between a training-step row and the matching LM-alone row is the adapter, packing and
update; the gap between the LM-alone row and 100 % is the LM's own kernels at this width.

Variants (``LMAlone``): eager or ``torch.compile`` of the LM body (``train.compile``), replayed
from one CUDA graph (what ``train.step_graph`` does to the whole step; CUDA only), and with
SDPA's cuDNN attention tried first (``train.cudnn_attention``, off by default because it builds
a plan per new sequence shape; a recorded step has fixed shapes; CUDA only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from common import sync, timed
from torch.nn.attention import SDPBackend

from g4mm.model.causal_attention import causal_attention
from g4mm.model.graph4mm import Graph4MM, target_loss
from g4mm.train.loop import autocast_for, frozen_dtype_for, training_sdpa


@dataclass(frozen=True)
class LMAlone:
    """One LM-alone row: compiled body, one recorded CUDA graph, cuDNN attention first."""

    compile_lm: bool = False
    graphed: bool = False
    cudnn: bool = False

    @property
    def name(self) -> str:
        parts = ["frozen LM alone"]
        parts += ["compile LM"] if self.compile_lm else []
        parts += ["CUDA graph"] if self.graphed else []
        parts += ["cuDNN attention"] if self.cudnn else []
        return " + ".join(parts)

    def runs_on(self, device: torch.device) -> bool:
        return device.type == "cuda" or not (self.graphed or self.cudnn)


def lm_work_inputs(model: Graph4MM, batch: int, tokens: int, targets: int, seed: int = 0):
    """Full-length packed inputs: embeddings E (B, L, D) in the LM's dtype requiring grad,
    predicting positions p (B, T) = L-T-1 .. L-2, random target ids y and an all-ones mask."""
    embed = model.lm.get_input_embeddings().weight
    gen = torch.Generator(device=embed.device).manual_seed(seed)
    shape = (batch, tokens, embed.shape[1])
    embeds = (0.02 * torch.randn(shape, generator=gen, device=embed.device)).to(embed.dtype)
    predictor = torch.arange(tokens - targets - 1, tokens - 1, device=embed.device)
    ids = torch.randint(4, embed.shape[0], (batch, targets), generator=gen, device=embed.device)
    return embeds.requires_grad_(True), predictor.expand(batch, -1), ids, torch.ones_like(ids)


def fresh_dynamo() -> None:
    """Before every compiled row: drop all of dynamo's state. Dynamo shares compiled code
    across modules of one class (a new model's forward reuses the last row's code), and with
    it the sequence lengths it has seen: a row that saw two lengths leaves the LM compiled for
    any length (dynamic shapes), which later rows at one length would then run. It also does
    not guard on the SDPA backends (code traced under flash would serve a cuDNN row). Each row
    compiles afresh (inductor's FX graph cache may serve identical graphs; its saving on the
    GPU is not measured here)."""
    torch._dynamo.reset()


def sdpa_kernel_name(lm: Any, batch: int, tokens: int, cudnn: bool) -> str:
    """The SDPA backend that training's attention (``training_sdpa(cudnn)``) picks for this
    LM's causal self-attention at (batch, tokens), gradients on: ``FLASH_ATTENTION``,
    ``CUDNN_ATTENTION``, ... (a tried-first backend that cannot run the shape is passed over
    silently; this says which one ran)."""
    config = lm.config
    weight = lm.get_input_embeddings().weight
    heads = config.num_attention_heads
    shape = (batch, heads, tokens, config.hidden_size // heads)
    q = torch.zeros(shape, device=weight.device, dtype=weight.dtype, requires_grad=True)
    with training_sdpa(cudnn):
        return SDPBackend(torch._fused_sdp_choice(q, q, q, is_causal=True)).name


def lm_work(
    model: Graph4MM,
    device: torch.device,
    embeds: torch.Tensor,
    predictor: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LM-alone micro-step (module doc): the loss and dE, under training's autocast."""
    with autocast_for(device, "auto"), causal_attention(model.lm):
        loss = target_loss(model.packed_target_logits(embeds, predictor), ids, mask)
    (grad,) = torch.autograd.grad(loss, embeds)
    return loss.detach(), grad


def time_lm_alone(
    model: Graph4MM,
    device: torch.device,
    batch: int,
    tokens: int,
    targets: int,
    steps: int,
    warmup: int,
    plan: LMAlone,
) -> dict[str, Any]:
    """Seconds per LM-alone micro-step (mean of ``steps`` after ``warmup``), the frozen LM
    stored as training stores it; restores fp32 storage and eager mode afterwards."""
    model.cast_frozen(frozen_dtype_for(device, "auto", "auto"))
    if plan.compile_lm:
        fresh_dynamo()
    model.compile_parts(plan.compile_lm, scope="lm")
    inputs = lm_work_inputs(model, batch, tokens, targets)
    kernel = sdpa_kernel_name(model.lm, batch, tokens, plan.cudnn)

    def work() -> tuple[torch.Tensor, torch.Tensor]:
        return lm_work(model, device, *inputs)

    try:
        with training_sdpa(plan.cudnn):
            step = _recorded(work, device, warmup) if plan.graphed else work
            loss, grad = step()
            if not (torch.isfinite(loss) and torch.isfinite(grad).all()):
                raise FloatingPointError(f"{plan.name}: non-finite loss or gradient")
            seconds = timed(step, device, steps, warmup=0 if plan.graphed else warmup)
    finally:
        model.compile_parts(False)
        model.cast_frozen(torch.float32)
    return {"seconds": seconds, "samples": batch, "loss": float(loss), "attention": kernel}


def _recorded(work, device: torch.device, warmup: int):
    """``work`` recorded as one CUDA graph after ``warmup`` runs on a side stream; returns the
    replay, which yields the recorded outputs (overwritten by each replay)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            work()
    torch.cuda.current_stream(device).wait_stream(side)
    sync(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = work()

    def replay() -> tuple[torch.Tensor, torch.Tensor]:
        graph.replay()
        return outputs

    return replay
