"""Captioning metrics (BLEU-1..4, ROUGE-L, CIDEr via pycocoevalcap) and classification accuracy.

Two protocols (:func:`score_captions`): COCO's, here, and the paper's
(:mod:`g4mm.eval.paper_protocol`, keys ``paper_*``), which the official code used for the
paper's table. For the prediction ``"The cat sat. It slept"`` against ``"the cat sat"`` COCO
gives BLEU-1 0.60 / ROUGE-L 0.79, the paper's protocol 0.67 / 1.00 (it cuts at the '.', keeps
case in BLEU and lower-cases in ROUGE).

COCO's protocol: unlike the official Graph4MM evaluation, predictions and references are
treated identically: both go through ONE call of pycocoevalcap's Stanford PTB tokenizer
(lower-cased, punctuation removed), and nothing is cut at the first '.'. So "The cat sat."
scores as a perfect match for the reference "the cat sat".

Scores are pycocoevalcap's, on their usual scale: BLEU is corpus-level (n-gram counts pooled over
all samples, 'closest' reference length for the brevity penalty), ROUGE-L is the mean sentence
F-score (beta 1.2), CIDEr is pycocoevalcap's CIDEr-D (x10; its idf comes from the references of
THIS call, so a single sample, or n-grams present in every reference, contribute 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from g4mm.console import stderr_without

__all__ = [
    "CAPTION_METRICS",
    "accuracy",
    "caption_metrics",
    "normalise_caption",
    "score_captions",
]

#: The keys :func:`caption_metrics` returns, in order.
CAPTION_METRICS: tuple[str, ...] = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "cider")


def normalise_caption(text: str | None) -> str:
    """Collapse every run of whitespace (incl. ``\\r``, ``\\u2028`` and other separators the
    Java tokenizer would read as line breaks) to one space.

    The PTB tokenizer is fed one caption per line and its output is matched back by line
    number; a caption containing a line break would silently shift every later caption onto
    the wrong sample, so this runs on every caption first. ``None`` becomes ``""``.
    """
    return " ".join(str(text or "").split())


#: what pycocoevalcap's Java tokenizer prints to stderr on every run
PTB_TOKENIZER_CHATTER = r"PTBTokenizer tokenized\s+\d+ tokens at [\d.]+ tokens per second\.\s*"


def _ptb_tokenize(captions: dict[tuple[str, int], list[str]]) -> dict[tuple[str, int], list[str]]:
    """One PTBTokenizer run over every caption; checks that every caption came back."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    payload = {k: [{"caption": normalise_caption(c)} for c in v] for k, v in captions.items()}
    try:
        with stderr_without(PTB_TOKENIZER_CHATTER):
            tokenized = PTBTokenizer().tokenize(payload)
    except FileNotFoundError as err:  # the `java` executable
        raise RuntimeError(
            "caption_metrics needs Java on PATH for pycocoevalcap's PTB tokenizer"
        ) from err
    broken = [k for k, v in captions.items() if len(tokenized.get(k, ())) != len(v)]
    if broken:
        raise RuntimeError(
            f"PTB tokenizer output does not line up with its input ({len(broken)} of "
            f"{len(captions)} entries lost or misaligned, e.g. {broken[:3]}); is Java working?"
        )
    return tokenized


def caption_metrics(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr of ``predictions`` against ``references``.

    Args:
        predictions: one generated string per sample, used whole (never cut at a '.').
        references: per sample either one string or a non-empty list of strings.

    Returns:
        ``{"bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "cider"}`` -> float.

    Empty predictions (empty after tokenisation too, e.g. ``""`` or ``"..."``) are scored as
    what they are, a zero-length hypothesis: 0 n-gram matches, 0 towards BLEU's hypothesis
    length (so they lower the brevity penalty), ROUGE-L 0, CIDEr 0. pycocoevalcap 1.2's scorers
    accept empty hypotheses; what used to break on them is the line-based PTB tokenizer
    round-trip, which is guarded by :func:`normalise_caption` and an alignment check. No
    placeholder token is inserted, because one would add phantom hypothesis tokens to BLEU's
    counts.

    Raises:
        ValueError: lengths differ, no samples, or a sample whose references are all empty
            after tokenisation (empty references are dropped when the sample has others).
        RuntimeError: Java missing / the tokenizer output is misaligned.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(predictions) != len(references):
        raise ValueError(
            f"caption_metrics: {len(predictions)} predictions but {len(references)} references"
        )
    if not predictions:
        raise ValueError("caption_metrics: no samples")
    captions: dict[tuple[str, int], list[str]] = {}
    for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        ref_list = [refs] if isinstance(refs, str) or refs is None else list(refs)
        if not ref_list:
            raise ValueError(f"caption_metrics: sample {i} has no reference")
        captions["pred", i] = [pred]
        captions["ref", i] = ref_list
    tokenized = _ptb_tokenize(captions)
    res: dict[int, list[str]] = {}
    gts: dict[int, list[str]] = {}
    for i in range(len(predictions)):
        res[i] = [tokenized["pred", i][0]]
        gts[i] = [r for r in tokenized["ref", i] if r.strip()]
        if not gts[i]:
            raise ValueError(
                f"caption_metrics: every reference of sample {i} is empty after PTB tokenisation "
                f"({references[i]!r})"
            )
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores = [*bleu, rouge, cider]
    return {k: float(v) for k, v in zip(CAPTION_METRICS, scores, strict=True)}


def score_captions(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    protocol: str = "both",
) -> dict[str, float]:
    """Caption metrics under ``protocol``: ``coco`` (:func:`caption_metrics`: ``bleu1`` ..
    ``cider``), ``paper`` (:func:`g4mm.eval.paper_protocol.paper_caption_metrics`:
    ``paper_bleu1`` .. ``paper_cider``) or ``both`` (every key of the two).

    The COCO protocol is the field's standard and the one to trust; the paper's is what the
    numbers in the Graph4MM table were made with, so only ``paper_*`` can be put beside them.
    """
    from g4mm.eval.paper_protocol import paper_caption_metrics

    if protocol not in ("coco", "paper", "both"):
        raise ValueError(f"protocol = {protocol!r}: expected coco|paper|both")
    scores: dict[str, float] = {}
    if protocol in ("coco", "both"):
        scores.update(caption_metrics(predictions, references))
    if protocol in ("paper", "both"):
        scores.update(paper_caption_metrics(predictions, references))
    return scores


def accuracy(
    pred_ids: torch.Tensor | Sequence[int], true_ids: torch.Tensor | Sequence[int]
) -> float:
    """Fraction of positions where ``pred_ids == true_ids``.

    Raises:
        ValueError: different lengths, or no samples (accuracy of nothing is undefined).
    """
    pred = torch.as_tensor(pred_ids).reshape(-1).long().cpu()
    true = torch.as_tensor(true_ids).reshape(-1).long().cpu()
    if pred.numel() != true.numel():
        raise ValueError(f"accuracy: {pred.numel()} predictions but {true.numel()} labels")
    if pred.numel() == 0:
        raise ValueError("accuracy: no samples")
    return int((pred == true).sum()) / pred.numel()
