"""Graph4MM over a frozen Hugging Face causal LM (paper Fig. 2, read top to bottom).

    frozen encoders  ->  node features F_T (text nodes), F_P (image nodes)   [precomputed]
    adapter          ->  soft tokens S (B, S, D_lm): Graph4MM or an MMGL baseline
    frozen LM input  =   [the layout's tokens, S written into its slots ; target tokens]
                         (g4mm.model.layout: the subgraph's text with the graph tokens
                         among it, or the pooled ablation [prompt ; S])
    loss             =   cross-entropy on the target tokens only

Only the adapter is trained: the LM and the vision encoder are frozen (eval mode, no grads, not
in the optimizer, not in adapter checkpoints).

Training runs the LM padding-free at the front: each row's real tokens are moved to the left
(prompt padding and masked soft tokens go to the end), so the LM sees one causal sequence per
row with positions 0.. and no attention mask at all (SDPA can take its fused causal kernels,
and no mask is built or inspected on the host). Trailing padding is never attended to by a
real token, and logits are computed only at the positions that predict a target.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from g4mm.config import COMPILE_SCOPES
from g4mm.model.adapters import GRAPH4MM_VARIANTS, Graph4MMAdapter
from g4mm.model.backbones import load_lm, load_vision
from g4mm.model.baselines import (
    ConcatAdapter,
    GNNConcatAdapter,
    ImageTokenAdapter,
    MMGLGNNAdapter,
    NoTokens,
)
from g4mm.model.causal_attention import causal_attention
from g4mm.model.encoders import image_feature_dim, text_feature_dim
from g4mm.model.inputs import Graph4MMInputs
from g4mm.model.layout import TokenGroup

VARIANTS = (*GRAPH4MM_VARIANTS, "mmgl_concat", "mmgl_gnn", "text_only")
_COMPILED = ("_compiled_body", "_compiled_adapter", "_compiled_forward")
IGNORE_INDEX = -100
#: ``config.model_type`` of the LMs the packed pass is exact for (plain head, plain causal
#: attention; tested): OPT and LLaMA. Any other causal LM takes the masked path.
PACKED_LM_TYPES = frozenset({"opt", "llama"})


def real_first(embeds: Tensor, real: Tensor) -> Tensor:
    """Each row's columns reordered so that its real ones (``real`` (B, L), bool) come first,
    both groups keeping their column order: ``[pad, a, pad, b]`` becomes ``[a, b, pad, pad]``.
    Returns the reordered ``embeds`` (B, L, D). Sort key: the column index c for a real
    column, c + L for padding; the keys are unique, so the order is exact."""
    length = real.shape[1]
    columns = torch.arange(length, device=real.device)
    order = torch.where(real, columns, columns + length).argsort(1)
    return embeds.gather(1, order[..., None].expand(-1, -1, embeds.shape[-1]))


def target_loss(logits: Tensor, target_ids: Tensor, target_mask: Tensor) -> Tensor:
    """Mean cross-entropy over the real target tokens, computed in fp32:
    ``-(1/|M|) sum_{(b,t) in M} log softmax(logits[b, t])[target_ids[b, t]]``, M the
    positions where ``target_mask`` (B, T) is set; logits (B, T, V)."""
    labels = target_ids.masked_fill(~target_mask.bool(), IGNORE_INDEX)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


@dataclass
class Graph4MMOutput:
    """``loss`` (scalar, mean over real target tokens), ``logits`` (B, T, V) at the target
    positions only, and ``num_target_tokens`` (scalar tensor)."""

    loss: Tensor | None
    logits: Tensor
    num_target_tokens: Tensor


def build_adapter(
    variant: str,
    text_dim: int,
    image_dim: int,
    lm_dim: int,
    context: str = "raw",
    token_placement: str = "at_images",
    tokens_per_image: int = 4,
    **hparams: Any,
) -> nn.Module:
    """The trainable part for ``variant`` (see :data:`VARIANTS`) under ``context`` (``raw``
    or ``pooled``) and, for ``raw``, ``token_placement`` (:mod:`g4mm.model.layout`).

    ``hparams`` are the model config's other fields (hidden_dim, num_heads, alpha, num_hops,
    max_hop, num_query_tokens, qformer_layers, ffn_mult, dropout, diffusion_impl, gnn_type,
    gnn_layers); each adapter takes the ones it uses. Every adapter declares its soft tokens
    in ``token_groups`` (:class:`~g4mm.model.layout.TokenGroup`), which the layout places.
    """
    if context not in ("raw", "pooled"):
        raise ValueError(f"context = {context!r}: expected raw|pooled")
    raw = context == "raw"
    if variant in GRAPH4MM_VARIANTS:
        keys = (
            "hidden_dim", "num_heads", "alpha", "num_hops", "max_hop", "num_query_tokens",
            "qformer_layers", "ffn_mult", "dropout", "diffusion_impl",
        )  # fmt: skip
        kwargs = {k: hparams[k] for k in keys if k in hparams}
        per_image = tokens_per_image if raw and token_placement == "at_images" else None
        return Graph4MMAdapter(
            variant, text_dim, image_dim, lm_dim, tokens_per_image=per_image, **kwargs
        )
    if variant == "mmgl_concat":
        if raw:
            return ImageTokenAdapter(image_dim, lm_dim, tokens_per_image)
        return ConcatAdapter(text_dim, image_dim, lm_dim, use_images=True)
    if variant == "text_only":
        return NoTokens(lm_dim) if raw else ConcatAdapter(text_dim, image_dim, lm_dim, False)
    if variant == "mmgl_gnn":
        if raw:
            hidden = {k: hparams[k] for k in ("hidden_dim",) if k in hparams}
            return MMGLGNNAdapter(text_dim, image_dim, lm_dim, tokens_per_image, **hidden)
        keys = ("hidden_dim", "gnn_type", "gnn_layers")
        return GNNConcatAdapter(
            text_dim, image_dim, lm_dim, **{k: hparams[k] for k in keys if k in hparams}
        )
    raise ValueError(f"unknown model variant {variant!r}; expected one of {VARIANTS}")


def adapter_token_groups(model_cfg: Any) -> tuple[TokenGroup, ...]:
    """The soft-token groups the adapter of ``model_cfg`` declares, without building weights
    (the adapter is made on the meta device; its groups do not depend on the widths)."""
    hparams = {k: v for k, v in vars(model_cfg).items() if k != "variant"}
    with torch.device("meta"):
        adapter = build_adapter(model_cfg.variant, 8, 8, 8, **hparams)
    return tuple(adapter.token_groups)


class Graph4MM(nn.Module):
    """A frozen causal LM (+ frozen vision encoder) steered by a trainable graph adapter.

    Args:
        lm: any ``AutoModelForCausalLM``; frozen here.
        adapter: from :func:`build_adapter`; the only trained module.
        vision: the frozen vision encoder used for features (optional at train time, where
            features come precomputed).
        tokenizer, image_processor: kept alongside for generation and feature extraction.
        variant: the variant name, for logs and checkpoints.
    """

    def __init__(
        self,
        lm: nn.Module,
        adapter: nn.Module,
        vision: nn.Module | None = None,
        tokenizer: Any = None,
        image_processor: Any = None,
        variant: str = "hop_diffused",
    ) -> None:
        super().__init__()
        self.lm, self.adapter, self.vision = lm, adapter, vision
        self.tokenizer, self.image_processor, self.variant = tokenizer, image_processor, variant
        for module in self.frozen_modules():
            module.requires_grad_(False)
            module.eval()

    @classmethod
    def from_config(cls, model_cfg: Any, artifact_dir: str | Path = "artifacts") -> Graph4MM:
        """Load the backbones named in ``model_cfg`` (a ``ModelConfig``) and build the adapter."""
        lm, tokenizer = load_lm(model_cfg.lm, artifact_dir)
        vision, processor = load_vision(model_cfg.vision, artifact_dir)
        adapter = build_adapter(
            model_cfg.variant,
            text_dim=text_feature_dim(lm),
            image_dim=image_feature_dim(vision),
            lm_dim=lm.get_input_embeddings().embedding_dim,
            **{k: v for k, v in vars(model_cfg).items() if k != "variant"},
        )
        return cls(lm, adapter, vision, tokenizer, processor, variant=model_cfg.variant)

    # ---- frozen / trainable bookkeeping -------------------------------------------------
    def frozen_modules(self) -> list[nn.Module]:
        return [m for m in (self.lm, self.vision) if m is not None]

    def train(self, mode: bool = True) -> Graph4MM:
        """Switch the adapter's mode; frozen modules stay in eval mode (no dropout)."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups over the adapter only: decay on matrices, none on biases and norms."""
        params = [p for p in self.adapter.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]

    @property
    def bare_adapter(self) -> nn.Module:
        """The adapter without a DDP wrapper (DDP keeps the real module in ``.module``)."""
        return getattr(self.adapter, "module", self.adapter)

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """What a checkpoint holds: the adapter's tensors, never the frozen backbones."""
        return {k: v.detach().clone() for k, v in self.bare_adapter.state_dict().items()}

    def load_adapter_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load adapter weights; any missing/unexpected key or shape mismatch is an error."""
        own = self.bare_adapter.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in sorted(set(own) & set(state))
            if state[k].shape != own[k].shape
        ]
        if missing or unexpected or shapes:
            raise ValueError(
                f"adapter checkpoint does not match this model (variant {self.variant!r}): "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches "
                f"{shapes[:5]}"
            )
        self.bare_adapter.load_state_dict(state)

    # ---- the LM sequence -----------------------------------------------------------------
    def _prompt_embeddings(self, inputs: Graph4MMInputs) -> Tensor:
        """The layout's prompt as LM input embeddings (B, P, D): token embeddings, with the
        adapter's soft tokens written into the slots (``inputs.slot_index``; LLaVA's
        placeholder scatter): ``E[b, p] = S[b, slot[b, p]]`` where ``slot >= 0``, else
        ``embed(prompt_ids[b, p])``. One gather and one select: no host sync."""
        embed = self.lm.get_input_embeddings()
        adapter = self.__dict__.get("_compiled_adapter")
        if adapter is None:
            adapter = self.adapter
        tokens, _ = adapter(inputs)  # (B, S, D_lm)
        text = embed(inputs.prompt_ids)  # (B, P, D_lm)
        if tokens.shape[1] == 0:
            return text
        slot = inputs.slot_index  # (B, P), -1 at ordinary tokens
        index = slot.clamp(min=0)[..., None].expand(-1, -1, tokens.shape[-1])
        soft = tokens.gather(1, index).to(text.dtype)  # (B, P, D_lm)
        return torch.where((slot >= 0)[..., None], soft, text)

    def _sequence(self, inputs: Graph4MMInputs, with_targets: bool):
        """``[prompt with its soft tokens (; target)]`` embeddings (B, L, D), attention mask
        and positions (B, L). The prompt is left-padded and every slot is real, so its last
        column is a real token: the one that predicts the first target and the first
        generated token."""
        embed = self.lm.get_input_embeddings()
        parts, masks = [self._prompt_embeddings(inputs)], [inputs.prompt_mask]
        if with_targets:
            parts.append(embed(inputs.target_ids))
            masks.append(inputs.target_mask)
        mask = torch.cat(masks, dim=1).long()  # (B, L)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding keeps positions 0..
        return torch.cat(parts, dim=1), mask, positions

    def _packed_sequence(self, inputs: Graph4MMInputs) -> tuple[Tensor, Tensor]:
        """``[prompt ; soft tokens ; target]`` with every row's real tokens moved to the front.

        Returns the embeddings (B, L, D) and, for each target column k, the position of the
        hidden state that predicts it (B, T). Row i's real tokens keep their order and land at
        positions 0 .. n_i - 1 (what the masked layout gives them through its position ids);
        padding fills n_i .. L - 1, where causal attention never lets a real token see it.
        """
        embeds, mask, _ = self._sequence(inputs, with_targets=True)
        real = mask.bool()
        packed = real_first(embeds, real)
        slot = real.long().cumsum(1) - 1  # (B, L): packed position of each real column
        num_targets = inputs.target_ids.shape[1]
        predictor = (slot[:, real.shape[1] - num_targets :] - 1).clamp(min=0)  # (B, T)
        return packed, predictor

    def _lm_hidden(self, embeds: Tensor) -> Tensor:
        """Last hidden states of the frozen LM body over unmasked causal rows, (B, L, D)."""
        body = self.__dict__.get("_compiled_body")
        if body is None:
            body = self.lm.base_model
        return body(inputs_embeds=embeds, use_cache=False).last_hidden_state

    def _packed_pass_is_exact(self) -> bool:
        """True when the packed, mask-free pass computes this LM's own logits: an architecture
        in :data:`PACKED_LM_TYPES` whose logits are ``get_output_embeddings()(base_model(...))``
        with plain causal attention over every position. Others (soft-capped or scaled heads,
        sliding windows, unknown architectures) take the masked path, which calls the LM whole:
        exact for any causal LM, with an attention mask over the padded layout."""
        config = getattr(self.lm, "config", None)
        return (
            getattr(config, "model_type", None) in PACKED_LM_TYPES
            and self.lm.base_model is not self.lm
            and self.lm.get_output_embeddings() is not None
            and getattr(config, "final_logit_softcapping", None) is None
            and getattr(config, "logit_scale", None) is None
            and getattr(config, "sliding_window", None) is None
        )

    def compile_parts(self, enabled: bool = True, scope: str = "lm", **options: Any) -> None:
        """Run part of :meth:`forward` through ``torch.compile`` (``train.compile``); ``scope``
        (``train.compile_scope``) is ``"lm"`` (the frozen LM body), ``"lm+adapter"`` (and the
        adapter, whose many small ops fuse into few kernels) or ``"forward"`` (the whole
        teacher-forced pass: adapter, packing, LM, head and loss as one graph).
        ``enabled=False`` goes back to eager. Compilation happens lazily at the next forward,
        so callers must be ready for that call to fail (see
        :func:`g4mm.train.loop.train_loop`)."""
        if scope not in COMPILE_SCOPES:
            raise ValueError(f"compile scope {scope!r}: expected one of {COMPILE_SCOPES}")
        compiled: dict[str, Any] = dict.fromkeys(_COMPILED)
        if enabled and scope == "forward":
            compiled["_compiled_forward"] = torch.compile(self._teacher_forced, **options)
        elif enabled:
            compiled["_compiled_body"] = torch.compile(self.lm.base_model, **options)
            if scope == "lm+adapter":
                compiled["_compiled_adapter"] = torch.compile(self.adapter, **options)
        self.__dict__.update(compiled)  # plain attributes, not submodules: no duplicate state

    @property
    def is_compiled(self) -> bool:
        """Whether :meth:`compile_parts` left any part compiled."""
        return any(self.__dict__.get(name) is not None for name in _COMPILED)

    def cast_frozen(self, dtype: torch.dtype) -> Graph4MM:
        """Store the frozen LM and vision encoder in ``dtype`` (``train.frozen_dtype``).

        bf16 storage on a GPU removes the per-step fp32 -> bf16 weight casts that autocast
        would otherwise redo in every forward (and their backward), and halves the frozen
        weights' memory. The adapter keeps fp32 master weights; soft tokens are cast to the
        embedding dtype where they enter the LM, and the loss is computed in fp32.
        """
        for module in self.frozen_modules():
            module.to(dtype)
        return self

    def forward(self, inputs: Graph4MMInputs) -> Graph4MMOutput:
        """Teacher-forced pass; logits and loss only at the T target positions."""
        if inputs.target_ids is None or inputs.target_mask is None:
            raise ValueError("forward needs target_ids and target_mask; use generate() instead")
        teacher_forced = self.__dict__.get("_compiled_forward")
        if teacher_forced is None:
            teacher_forced = self._teacher_forced
        # the packed layout needs no attention mask: keep transformers from checking for
        # packed rows on the host or building a dense mask (g4mm.model.causal_attention)
        packed = (
            causal_attention(self.lm) if self._packed_pass_is_exact() else contextlib.nullcontext()
        )
        with packed:
            loss, logits = teacher_forced(inputs)
        return Graph4MMOutput(loss, logits, inputs.target_mask.sum())

    def _teacher_forced(self, inputs: Graph4MMInputs) -> tuple[Tensor, Tensor]:
        """(loss, target logits (B, T, V)) of :meth:`forward`, as one compilable function."""
        if self._packed_pass_is_exact():
            logits = self.packed_target_logits(*self._packed_sequence(inputs))
        else:
            logits = self._masked_target_logits(inputs)
        return target_loss(logits, inputs.target_ids, inputs.target_mask), logits

    def packed_target_logits(self, embeds: Tensor, predictor: Tensor) -> Tensor:
        """The LM's work in the packed pass: target logits (B, T, V) from packed embeddings
        (B, L, D) and each target's predicting position (B, T) (:meth:`_packed_sequence`).

        Only the T predicting hidden states go through the head: ``logits = W_head
        h[predictor]``, not the (B, L, V) of every position. Needs causal attention without a
        mask over the rows (:func:`g4mm.model.causal_attention.causal_attention`, which
        :meth:`forward` enters)."""
        hidden = self._lm_hidden(embeds)  # (B, L, D)
        hidden = hidden.gather(1, predictor[..., None].expand(-1, -1, hidden.shape[-1]))
        return self.lm.get_output_embeddings()(hidden)  # (B, T, V)

    def _masked_target_logits(self, inputs: Graph4MMInputs) -> Tensor:
        """Target logits (B, T, V) through the LM's own head on the padded, masked layout."""
        embeds, mask, positions = self._sequence(inputs, with_targets=True)
        num_targets = inputs.target_ids.shape[1]
        # positions L-T-1 .. L-2 predict the T targets; logits_to_keep=T+1 keeps L-T-1 .. L-1
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            logits_to_keep=num_targets + 1,
            use_cache=False,
        )
        return out.logits[:, :-1]

    @torch.no_grad()
    def generate(
        self, inputs: Graph4MMInputs, max_new_tokens: int = 32, num_beams: int = 1, **kwargs: Any
    ) -> Tensor:
        """Autoregressive decoding with the LM's KV cache (HF ``generate``).

        Returns the new tokens only, (B, <= max_new_tokens), padded with the pad token.
        """
        was_training = self.training
        self.eval()  # no dropout in the adapter while decoding, whoever calls
        try:
            embeds, mask, _ = self._sequence(inputs, with_targets=False)
        finally:
            self.train(was_training)
        config = self.lm.generation_config
        options = {
            "max_new_tokens": max_new_tokens,
            "num_beams": num_beams,
            "do_sample": False,
            "use_cache": True,
            "pad_token_id": config.pad_token_id,
            "eos_token_id": config.eos_token_id,
            **kwargs,
        }
        return self.lm.generate(inputs_embeds=embeds, attention_mask=mask, **options)
