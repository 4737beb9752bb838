"""Frozen feature extractors: one vector per node text and per image.

These run once per unique text / image (the embed stage caches them); never per step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def mean_pooled_text_features(lm: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    r"""Mean of the LM's last hidden states over real tokens: :math:`\frac{1}{|t|}\sum_t h_t`.

    ``lm`` is a causal LM (its ``base_model`` is used, so no vocabulary projection is paid)
    or a bare transformer returning ``last_hidden_state``.

    Shapes: input_ids (B, L), attention_mask (B, L) -> (B, D).
    """
    body = getattr(lm, "base_model", lm)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    weights = attention_mask.to(hidden.dtype)[..., None]  # (B, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@torch.no_grad()
def pooled_image_features(vision: nn.Module, pixel_values: Tensor) -> Tensor:
    """The vision encoder's pooled output (CLIP: post-LayerNorm CLS).

    Shapes: pixel_values (B, 3, H, W) -> (B, D_v).
    """
    return vision(pixel_values=pixel_values).pooler_output


def text_feature_dim(lm: nn.Module) -> int:
    """Width of :func:`mean_pooled_text_features` for a causal LM (the LM head's input)."""
    return lm.get_output_embeddings().weight.shape[1]


def image_feature_dim(vision: nn.Module) -> int:
    """Width of :func:`pooled_image_features`."""
    return vision.config.hidden_size
