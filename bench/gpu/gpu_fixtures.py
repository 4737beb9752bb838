"""The tiny model and random batch every GPU check runs on (one module both
``gpu_checks`` and ``ddp_step_graph`` import, so neither imports the other)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from conftest import random_inputs, with_soft_tokens

from g4mm.model import Graph4MM, build_adapter
from g4mm.model.encoders import image_feature_dim, text_feature_dim
from g4mm.model.tiny import tiny_clip_vision, tiny_llama, tiny_opt


def tiny_model(kind: str, variant: str, device: str, tokenizer, impl: str = "dense") -> Graph4MM:
    torch.manual_seed(0)
    build = tiny_opt if kind == "opt" else tiny_llama
    lm = build(tokenizer, hidden_size=64, num_layers=2, num_heads=4, max_positions=256)
    vision, processor = tiny_clip_vision(image_size=16, patch_size=8, hidden_size=32)
    adapter = build_adapter(
        variant, text_feature_dim(lm), image_feature_dim(vision),
        lm.get_input_embeddings().embedding_dim, hidden_dim=32, num_heads=4, alpha=0.1,
        num_hops=3, num_query_tokens=4, qformer_layers=1, dropout=0.0, diffusion_impl=impl,
        context="pooled", token_placement="after_text",
    )  # fmt: skip
    return Graph4MM(lm, adapter, vision, tokenizer, processor, variant).to(device)


def tiny_batch(model: Graph4MM, tokenizer, b: int, **kwargs):
    """A random batch for ``model`` (:func:`tiny_model`): its 4 query tokens after every
    prompt, so a batch of prompt_len P is P + 4 columns wide."""
    inputs = random_inputs(
        b, text_feature_dim(model.lm), image_feature_dim(model.vision), len(tokenizer),
        tokenizer.pad_token_id, **kwargs,
    )  # fmt: skip
    return with_soft_tokens(inputs, model.bare_adapter, tokenizer.pad_token_id)
