"""Evaluation: free-running generation + caption metrics (COCO's protocol and the paper's),
likelihood-ranked classification (zero-shot included), and one-call ``evaluate_rows``.

Ray-free (a test checks it)."""

from g4mm.eval.classify import class_log_likelihoods, classify
from g4mm.eval.evaluate import classification_metrics, evaluate_rows, target_loss
from g4mm.eval.generation import generate_predictions
from g4mm.eval.metrics import (
    CAPTION_METRICS,
    accuracy,
    caption_metrics,
    normalise_caption,
    score_captions,
)
from g4mm.eval.paper_protocol import PAPER_CAPTION_METRICS, paper_caption_metrics

__all__ = [
    "CAPTION_METRICS",
    "PAPER_CAPTION_METRICS",
    "accuracy",
    "caption_metrics",
    "class_log_likelihoods",
    "classification_metrics",
    "classify",
    "evaluate_rows",
    "generate_predictions",
    "normalise_caption",
    "paper_caption_metrics",
    "score_captions",
    "target_loss",
]
