"""One evaluation pass over sample rows: loss, generation metrics, classification accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from g4mm.config import METRICS
from g4mm.eval._runtime import chunks, eval_context, resolve_device, with_targets
from g4mm.eval.classify import classify
from g4mm.eval.generation import generate_predictions
from g4mm.eval.metrics import CAPTION_METRICS, accuracy, caption_metrics

__all__ = ["evaluate_rows", "target_loss"]

CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "zero_shot_accuracy")


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


def evaluate_rows(
    model: Any,
    collator: Any,
    rows: Sequence[dict],
    eval_cfg: Any,
    class_names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Evaluate ``model`` on ``rows`` (``SAMPLE_SCHEMA`` dicts) as ``eval_cfg`` (an
    ``EvalConfig``) asks.

    - Only the first ``eval_cfg.max_samples`` rows are used (in the given order) when it is set.
    - ``loss`` is always reported: the token-weighted mean teacher-forced target loss.
    - Generative (``eval_cfg.metrics`` names any of bleu1..4 / rougeL / cider): every row is
      generated (``eval_cfg.batch_size``, ``max_new_tokens``, ``num_beams``) and ALL caption
      keys of :func:`caption_metrics` are reported, against ``target_text``.
    - Classification (``accuracy`` or ``zero_shot_accuracy`` named): every row is ranked over
      ALL ``class_names`` (:func:`g4mm.eval.classify.classify`); both ``accuracy`` (rows with
      ``zero_shot`` False/None) and ``zero_shot_accuracy`` (rows with ``zero_shot`` True) are
      reported, and a group with no rows is OMITTED from the dict (never NaN, never None).

    Returns:
        ``(metrics, samples)``: metrics name -> float, and one dict per evaluated row with
        ``sample_id``, ``split``, ``prompt``, ``prediction``, ``reference`` (the generated text
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
    generative = any(m in CAPTION_METRICS for m in wanted)
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
            "prompt": row.get("prompt"),
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
        metrics.update(caption_metrics(predictions, references))
        for sample, prediction in zip(samples, predictions, strict=True):
            sample["prediction"] = prediction

    if classifying:
        assert class_names is not None
        predicted = classify(model, collator, rows, class_names, eval_cfg.batch_size, device)
        zero_shot = torch.tensor([bool(row.get("zero_shot")) for row in rows])
        true = torch.tensor(labels)
        for key, group in (("accuracy", ~zero_shot), ("zero_shot_accuracy", zero_shot)):
            if group.any():
                metrics[key] = accuracy(predicted[group], true[group])
        for sample, p, t, zs in zip(samples, predicted.tolist(), labels, zero_shot.tolist(),
                                    strict=True):  # fmt: skip
            sample.update(label=t, predicted_label=p, zero_shot=zs)
            if not generative:
                sample["prediction"] = class_names[p]
                sample["reference"] = class_names[t]
    return metrics, samples
