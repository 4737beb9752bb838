"""The paper's scoring protocol: how the official Graph4MM code made the numbers in its table.

Reproduced from the official ``language_modelling/run_generation.py`` (``validate``), with the
same libraries:

1. each prediction is cut at its first ``'.'`` when that ``'.'`` stands after character 5
   (``i = p.find('.')``; ``p[:i] if i > 5 else p``: the period itself goes, and a prediction
   whose first '.' is within its first six characters, or that has none, is kept whole);
   references are used whole;
2. BLEU-n: torchmetrics' ``BLEUScore(n_gram=n)``, corpus level (n-gram counts pooled over all
   samples, brevity penalty on the closest reference length), whitespace tokens, **case and
   punctuation kept** ("Cat" != "cat", "sat." != "sat"), no smoothing;
3. ROUGE-L: torchmetrics' ``ROUGEScore``'s ``rougeL_fmeasure`` (lower-cased, non-alphanumerics
   dropped, no stemming; mean over samples, best over a sample's references). The official
   code calls ``ROUGEScore()`` whose default keys include ``rougeLsum``, which needs nltk and
   its ``punkt`` data (not downloadable on an offline machine); ``rouge_keys="rougeL"`` needs
   neither and gives the same ``rougeL_fmeasure`` (ROUGE-L does not split sentences);
4. CIDEr: pycocoevalcap's ``Cider`` (the official ``wikiweb2m/cider/`` is that code unchanged)
   called on the raw strings, split on whitespace only: no PTB tokenisation, no lower-casing.

Beside :func:`g4mm.eval.metrics.caption_metrics` (COCO's protocol: one PTB tokenisation of
predictions and references alike, lower-cased, punctuation removed, nothing cut), the two
differ wherever case, punctuation or a second sentence do. For the prediction
``"The cat sat. It slept"`` and the reference ``"the cat sat"``: COCO scores ``"the cat sat it
slept"`` (BLEU-1 0.6); the paper scores ``"The cat sat"`` (BLEU-1 2/3: "The" != "the").
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["PAPER_CAPTION_METRICS", "cut_at_first_period", "paper_caption_metrics"]

#: The keys :func:`paper_caption_metrics` returns, in order.
PAPER_CAPTION_METRICS: tuple[str, ...] = (
    "paper_bleu1", "paper_bleu2", "paper_bleu3", "paper_bleu4", "paper_rougeL", "paper_cider",
)  # fmt: skip

#: The official code keeps a prediction whole when its first '.' is at this index or before.
_MIN_PERIOD_INDEX = 5


def cut_at_first_period(prediction: str) -> str:
    """``p[:p.find('.')]`` when the first '.' is after character 5, else ``p`` unchanged."""
    stop = prediction.find(".")
    return prediction[:stop] if stop > _MIN_PERIOD_INDEX else prediction


def _reference_lists(
    references: Sequence[str] | Sequence[Sequence[str]], count: int
) -> list[list[str]]:
    if len(references) != count:
        raise ValueError(f"paper_caption_metrics: {count} predictions but {len(references)} "
                         "references")  # fmt: skip
    lists = []
    for i, refs in enumerate(references):
        ref_list = [refs] if isinstance(refs, str) or refs is None else list(refs)
        if not ref_list:
            raise ValueError(f"paper_caption_metrics: sample {i} has no reference")
        lists.append([str(r or "") for r in ref_list])
    return lists


def paper_caption_metrics(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr as the official Graph4MM code computes them (module doc).

    Args:
        predictions: one generated string per sample (cut here at its first '.').
        references: per sample one string or a non-empty list of strings, used whole.

    Returns:
        ``{"paper_bleu1", ..., "paper_bleu4", "paper_rougeL", "paper_cider"}`` -> float, on the
        scale the paper prints (BLEU and ROUGE-L in [0, 1], CIDEr-D x10 as pycocoevalcap).

    Raises:
        ValueError: lengths differ, no samples, or a sample without a reference.
    """
    from pycocoevalcap.cider.cider import Cider
    from torchmetrics.text import BLEUScore, ROUGEScore

    if not predictions:
        raise ValueError("paper_caption_metrics: no samples")
    refs = _reference_lists(references, len(predictions))
    preds = [cut_at_first_period(str(p or "")) for p in predictions]
    bleu = [float(BLEUScore(n_gram=n)(preds, refs)) for n in (1, 2, 3, 4)]
    rouge = float(ROUGEScore(rouge_keys="rougeL")(preds, refs)["rougeL_fmeasure"])
    cider, _ = Cider().compute_score(dict(enumerate(refs)), {i: [p] for i, p in enumerate(preds)})
    scores = [*bleu, rouge, float(cider)]
    return dict(zip(PAPER_CAPTION_METRICS, scores, strict=True))
