"""Mask-free causal attention for the packed teacher-forced LM pass.

The packed layout (:meth:`g4mm.model.graph4mm.Graph4MM._packed_sequence`) puts each row's real
tokens at positions ``0 .. n_i - 1`` and padding after them, so plain causal attention is
exactly right for every real token: ``softmax(Q K^T / sqrt(d) + causal) V`` with no padding
mask, which SDPA runs as its ``is_causal`` flash / memory-efficient kernels.

Given no attention mask, transformers 5 (``masking_utils``; seen in 5.17 and 5.24) does not
simply take that path: it checks on the host whether the position ids describe several packed
sequences per row (``find_packed_sequence_indices``: ``(mask[:, -1] == 0).all()``, one device
-> host sync per forward), and while a CUDA graph is recorded or ``torch.compile`` traces,
where it cannot check, it materialises a dense (B, 1, L, L) mask instead, which SDPA can only
run through its slower masked kernels (measured on an H100: the recorded step at batch 32 ran
at 259 samples/s against 457 eager, bench/RESULTS.md).

transformers builds no mask at all for an attention implementation registered in
``AttentionInterface`` without a mask function (its hook for external kernels). This module
registers one, :data:`CAUSAL_SDPA`, that is transformers' own SDPA function (``is_causal``
when no mask comes), and :func:`causal_attention` switches an LM's config to it for the
duration of a call. The LM's other uses (the masked layout, generation with left padding)
keep their implementation and masks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

#: The name of the mask-free causal SDPA implementation in transformers' ``AttentionInterface``.
CAUSAL_SDPA = "g4mm_causal_sdpa"


def register_causal_sdpa() -> None:
    """Register :data:`CAUSAL_SDPA` with transformers (at import; idempotent): transformers' own
    SDPA attention function under a name that has no mask function, so transformers >= 5 passes
    no mask and SDPA runs ``is_causal``. A mask that an LM builds by itself anyway (OPT in
    transformers 4.56 does) is used as given: the same causal mask, the same result, only
    without the mask-free kernels."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register(CAUSAL_SDPA, sdpa_attention_forward)


register_causal_sdpa()  # here, not in causal_attention(): nothing for torch.compile to trace


@contextlib.contextmanager
def causal_attention(lm: nn.Module) -> Iterator[None]:
    """Run ``lm`` (a Hugging Face model) with :data:`CAUSAL_SDPA` inside the block when it
    uses SDPA; other implementations (eager, flash-attention) are left as they are.

    The switch is a Python attribute of the LM's config, set and restored around the call, so
    the block must enclose any compiled or recorded call: a CUDA graph then holds the kernels
    the switch selects, and ``torch.compile`` guards on an attribute that every training step
    sets alike.
    """
    config = getattr(lm, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if before != "sdpa":
        yield
        return
    config._attn_implementation = CAUSAL_SDPA
    try:
        yield
    finally:
        config._attn_implementation = before
