"""Evaluation: free-running generation + pycocoevalcap caption metrics, likelihood-ranked
classification over all class names (zero-shot included), and one-call ``evaluate_rows``.

Ray-free (a test checks it)."""

from g4mm.eval.classify import class_log_likelihoods, classify
from g4mm.eval.evaluate import evaluate_rows, target_loss
from g4mm.eval.generation import generate_predictions
from g4mm.eval.metrics import CAPTION_METRICS, accuracy, caption_metrics, normalise_caption

__all__ = [
    "CAPTION_METRICS",
    "accuracy",
    "caption_metrics",
    "class_log_likelihoods",
    "classify",
    "evaluate_rows",
    "generate_predictions",
    "normalise_caption",
    "target_loss",
]
