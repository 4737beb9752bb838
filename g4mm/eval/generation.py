"""Batched free-running generation (never teacher-forced argmax)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from g4mm.eval._runtime import chunks, eval_context, resolve_device, with_targets

__all__ = ["generate_predictions"]


def generate_predictions(
    model: Any,
    collator: Any,
    rows: Sequence[dict],
    batch_size: int,
    max_new_tokens: int,
    num_beams: int = 1,
    device: torch.device | str | None = None,
) -> list[str]:
    """Generate one string per row with ``model.generate`` (KV-cached, greedy or beam search).

    Rows are collated ``batch_size`` at a time, in order, WITHOUT targets (the collator's
    ``with_targets=False`` semantics: the LM sees ``[prompt ; graph tokens]`` only). The new
    tokens are decoded with ``collator.tokenizer.batch_decode(skip_special_tokens=True)`` and
    stripped; nothing is cut at the first '.'.

    The model runs in eval mode under ``torch.inference_mode`` (bf16 autocast on CUDA); its
    previous train/eval mode is restored afterwards. ``device`` defaults to the model's.
    """
    device = resolve_device(model, device)
    collate = with_targets(collator, False)
    tokenizer = collator.tokenizer
    predictions: list[str] = []
    with eval_context(model, device):
        for batch in chunks(rows, batch_size):
            inputs = collate(batch)
            inputs.target_ids = inputs.target_mask = None  # in case a collator ignores the flag
            new_tokens = model.generate(
                inputs.to(device), max_new_tokens=max_new_tokens, num_beams=num_beams
            )
            texts = tokenizer.batch_decode(new_tokens.cpu(), skip_special_tokens=True)
            predictions.extend(t.strip() for t in texts)
    return predictions
