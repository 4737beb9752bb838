"""Classification as likelihood ranking of class names (open-vocabulary, so zero-shot works).

For each sample and each candidate class name c, the LM is teacher-forced on ``c + EOS`` as the
target after the sample's LM input (:mod:`g4mm.model.layout`); with ``y = tokens(c) + [EOS]``::

    score(c) = 1/|y| * sum_t log p(y_t | input, y_<t)      class_score = "mean" (default)
    score(c) =         sum_t log p(y_t | input, y_<t)      class_score = "sum"

The EOS makes "red" and "red shoe" distinct candidates. The sum is the name's likelihood, which
falls with every token, so it prefers short names whatever the input says (a 1-token name
against a 3-token one starts two log-probabilities ahead); the per-token mean compares the names
on how well the input predicts each of their tokens, the usual length normalisation of
likelihood ranking. Candidates are always ALL class names, held-out zero-shot classes included:
a zero-shot sample is classified against every class, never against a restricted set (the
"generalised" zero-shot setting: a model that has learnt only the seen names scores 0 on the
held-out ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from g4mm.eval._runtime import chunks, eval_context, resolve_device, with_targets

__all__ = ["class_log_likelihoods", "classify"]


def _check_class_names(collator: Any, class_names: Sequence[str]) -> list[str]:
    names = [str(n) for n in class_names]
    if not names:
        raise ValueError("class_names is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {names}")
    empty = [n for n in names if not n.strip()]
    if empty:
        raise ValueError(f"class_names has empty names: {empty!r}")
    limit = getattr(collator, "max_target_tokens", None)
    if limit is not None:
        tok = collator.tokenizer
        lengths = [len(tok(n, add_special_tokens=False)["input_ids"]) + 1 for n in names]
        too_long = [(n, k) for n, k in zip(names, lengths, strict=True) if k > limit]
        if too_long:
            raise ValueError(
                f"class names + EOS exceed collator.max_target_tokens={limit} and would be "
                f"truncated (scored on a prefix): {too_long[:5]}"
            )
    return names


def class_log_likelihoods(
    model: Any,
    collator: Any,
    rows: Sequence[dict],
    class_names: Sequence[str],
    batch_size: int,
    device: torch.device | str | None = None,
    score: str = "sum",
) -> torch.Tensor:
    """``(N, C)`` float32 (CPU): ``out[i, c] = sum_t log p(y_t | prefix, y_<t)`` where ``y`` is
    the tokens of ``class_names[c]`` followed by EOS, for ``rows[i]``; divided by ``|y|`` when
    ``score == "mean"`` (module docstring).

    Every row is repeated once per class with ``target_text`` replaced by the class name; the
    ``N * C`` (row, class) pairs are run ``batch_size`` PAIRS per forward pass (row-major
    order). Log-probs come from ``Graph4MM.forward``'s target-position logits (log-softmax in
    float32), gathered at the target ids and summed over the target mask.

    Raises:
        ValueError: empty / duplicate class names, or a name that would be truncated by the
            collator's ``max_target_tokens``.
    """
    if score not in ("mean", "sum"):
        raise ValueError(f"class score = {score!r}: expected mean|sum")
    names = _check_class_names(collator, class_names)
    device = resolve_device(model, device)
    collate = with_targets(collator, True)
    pairs = [(i, c) for i in range(len(rows)) for c in range(len(names))]
    scores = torch.empty(len(rows) * len(names), dtype=torch.float32)
    done = 0
    with eval_context(model, device):
        for batch in chunks(pairs, batch_size):
            inputs = collate([{**rows[i], "target_text": names[c]} for i, c in batch]).to(device)
            logits = model(inputs).logits  # (B, T, V) at the target positions
            logp = torch.log_softmax(logits.float(), dim=-1)
            token_logp = logp.gather(-1, inputs.target_ids[..., None]).squeeze(-1)
            mask = inputs.target_mask.float()
            sums = (token_logp * mask).sum(-1)
            if score == "mean":
                sums = sums / mask.sum(-1)
            scores[done : done + len(batch)] = sums.float().cpu()
            done += len(batch)
    return scores.reshape(len(rows), len(names))


def classify(
    model: Any,
    collator: Any,
    rows: Sequence[dict],
    class_names: Sequence[str],
    batch_size: int,
    device: torch.device | str | None = None,
    score: str = "mean",
) -> torch.Tensor:
    """``(N,)`` long: the index into ``class_names`` of each row's best-scoring class name
    (:func:`class_log_likelihoods` with ``score``; ties go to the lower index)."""
    scores = class_log_likelihoods(model, collator, rows, class_names, batch_size, device, score)
    return scores.argmax(dim=-1)
