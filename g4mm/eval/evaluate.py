"""One evaluation pass over sample rows: loss, generation metrics, classification accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from g4mm.config import CAPTION_METRIC_NAMES, METRICS
from g4mm.eval._runtime import chunks, eval_context, resolve_device, with_targets
from g4mm.eval.classify import class_log_likelihoods
from g4mm.eval.generation import generate_predictions
from g4mm.eval.metrics import accuracy, score_captions

__all__ = ["classification_metrics", "evaluate_rows", "target_loss"]

CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "seen_accuracy", "zero_shot_accuracy")


def target_loss(
    model: Any,
    collator: Any,
    rows: Sequence[dict],
    batch_size: int,
    device: torch.device | str | None = None,
) -> float:
    """Token-weighted mean teacher-forced cross-entropy over the rows' targets (+ EOS): the
    same number one big batch would give, whatever ``batch_size`` is."""
    device = resolve_device(model, device)
    collate = with_targets(collator, True)
    total, tokens = 0.0, 0
    with eval_context(model, device):
        for batch in chunks(rows, batch_size):
            out = model(collate(batch).to(device))
            n = int(out.num_target_tokens)
            total += float(out.loss) * n
            tokens += n
    if tokens == 0:
        raise ValueError("target_loss: no target tokens")
    return total / tokens


def classification_metrics(
    scores: torch.Tensor,
    labels: Sequence[int],
    zero_shot: Sequence[bool],
    zero_shot_classes: Sequence[int] | None,
) -> tuple[dict[str, float], torch.Tensor]:
    """Accuracies of ``scores`` (N, C: a class name's score per row, higher is better).

    - ``accuracy``: every row, ranked over all C classes; ``chance`` = 1 / C;
    - ``seen_accuracy``: rows of classes seen in training, over all C classes;
    - ``zero_shot_accuracy``: rows of held-out classes, ranked over the held-out classes
      only (the zero-shot protocol: can the model tell apart classes it never saw a target
      of?), ``zero_shot_chance`` = 1 / their number;
    - ``zero_shot_accuracy_all_classes``: the same rows ranked over all C classes (the
      "generalised" protocol, where a model also has to beat its trained bias towards the
      seen names).

    A group with no rows is omitted (never NaN). Returns the metrics and each row's predicted
    class over all classes (N,).
    """
    predicted = scores.argmax(dim=-1)
    true = torch.as_tensor(list(labels), dtype=torch.long)
    held_out = torch.as_tensor(list(zero_shot), dtype=torch.bool)
    metrics = {"accuracy": accuracy(predicted, true), "chance": 1.0 / scores.shape[1]}
    if (~held_out).any():
        metrics["seen_accuracy"] = accuracy(predicted[~held_out], true[~held_out])
    if held_out.any():
        classes = sorted(set(zero_shot_classes or ()) | set(true[held_out].tolist()))
        among = torch.as_tensor(classes, dtype=torch.long)
        restricted = among[scores[held_out][:, among].argmax(dim=-1)]
        metrics["zero_shot_accuracy"] = accuracy(restricted, true[held_out])
        metrics["zero_shot_chance"] = 1.0 / len(classes)
        metrics["zero_shot_accuracy_all_classes"] = accuracy(predicted[held_out], true[held_out])
    return metrics, predicted


def evaluate_rows(
    model: Any,
    collator: Any,
    rows: Sequence[dict],
    eval_cfg: Any,
    class_names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    zero_shot_classes: Sequence[int] | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Evaluate ``model`` on ``rows`` (``SAMPLE_SCHEMA`` dicts) as ``eval_cfg`` (an
    ``EvalConfig``) asks.

    - Only the first ``eval_cfg.max_samples`` rows are used (in the given order) when it is set.
    - ``loss`` is always reported: the token-weighted mean teacher-forced target loss.
    - Generative (``eval_cfg.metrics`` names any of bleu1..4 / rougeL / cider): every row is
      generated (``eval_cfg.batch_size``, ``max_new_tokens``, ``num_beams``) and every caption
      key of ``eval_cfg.protocol`` is reported against ``target_text``
      (:func:`g4mm.eval.metrics.score_captions`).
    - Classification (``accuracy``, ``seen_accuracy`` or ``zero_shot_accuracy`` named): every
      row is scored over ALL ``class_names`` (:func:`g4mm.eval.classify.class_log_likelihoods`,
      ``eval_cfg.class_score``) and :func:`classification_metrics` reports the accuracies
      (``zero_shot`` rows are the held-out ones; ``zero_shot_classes`` adds held-out classes
      that no evaluated row has to the zero-shot candidates).

    Returns:
        ``(metrics, samples)``: metrics name -> float, and one dict per evaluated row with
        ``sample_id``, ``split``, ``prediction``, ``reference`` (the generated text
        and ``target_text`` when generative; otherwise the predicted and true class names), and
        for classification also ``label``, ``predicted_label``, ``zero_shot``.

    Raises:
        ValueError: an unknown metric name; classification without ``class_names``; a row
            without a label, or with a label outside ``class_names``, under classification.
    """
    wanted = list(eval_cfg.metrics)
    unknown = [m for m in wanted if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown eval metrics {unknown}; expected names from {METRICS}")
    generative = any(m in CAPTION_METRIC_NAMES for m in wanted)
    classifying = any(m in CLASSIFICATION_METRICS for m in wanted)
    if eval_cfg.max_samples is not None:
        rows = rows[: eval_cfg.max_samples]
    rows = list(rows)
    if not rows:
        raise ValueError("evaluate_rows: no rows to evaluate")

    labels: list[int] = []
    if classifying:
        if not class_names:
            raise ValueError(f"metrics {wanted} need class_names for classification")
        for row in rows:
            label = row.get("label")
            if label is None or not 0 <= int(label) < len(class_names):
                raise ValueError(
                    f"row {row.get('sample_id')!r} has label {label!r}; classification needs a "
                    f"label in [0, {len(class_names)})"
                )
            labels.append(int(label))

    device = resolve_device(model, device)
    metrics: dict[str, float] = {
        "loss": target_loss(model, collator, rows, eval_cfg.batch_size, device)
    }
    samples = [
        {
            "sample_id": row.get("sample_id"),
            "split": row.get("split"),
            "prediction": None,
            "reference": row.get("target_text"),
        }
        for row in rows
    ]

    if generative:
        predictions = generate_predictions(
            model, collator, rows, eval_cfg.batch_size, eval_cfg.max_new_tokens,
            eval_cfg.num_beams, device,
        )  # fmt: skip
        references = [str(row.get("target_text") or "") for row in rows]
        metrics.update(score_captions(predictions, references, eval_cfg.protocol))
        for sample, prediction in zip(samples, predictions, strict=True):
            sample["prediction"] = prediction

    if classifying:
        assert class_names is not None
        scores = class_log_likelihoods(
            model, collator, rows, class_names, eval_cfg.batch_size, device,
            getattr(eval_cfg, "class_score", "mean"),
        )  # fmt: skip
        zero_shot = [bool(row.get("zero_shot")) for row in rows]
        accuracies, predicted = classification_metrics(scores, labels, zero_shot,
                                                       zero_shot_classes)  # fmt: skip
        metrics.update(accuracies)
        for sample, p, t, zs in zip(samples, predicted.tolist(), labels, zero_shot, strict=True):
            sample.update(label=t, predicted_label=p, zero_shot=zs)
            if not generative:
                sample["prediction"] = class_names[p]
                sample["reference"] = class_names[t]
    return metrics, samples
