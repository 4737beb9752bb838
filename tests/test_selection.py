"""Which evaluation is "best" (both training paths), and run files that stay valid JSON."""

from __future__ import annotations

import json
import math

import pytest

from g4mm.train.run_dir import write_json, write_predictions
from g4mm.train.selection import is_better, ranking


@pytest.mark.parametrize("mode", ["max", "min"])
def test_both_paths_pick_the_same_evaluation_and_ties_go_to_the_later(mode: str) -> None:
    """The in-process path (``is_better`` over evaluations in order) and the Ray path (the
    maximum of ``ranking`` over kept checkpoints) agree, ties included."""
    evaluations = [(100, 0.5), (200, 0.7), (300, 0.7), (400, 0.2), (500, math.nan), (600, None)]
    best_step, best_score = None, None
    for step, score in evaluations:
        if is_better(score, best_score, mode):
            best_step, best_score = step, score
    scored = [(step, s) for step, s in evaluations if s is not None and not math.isnan(s)]
    ray_step = max(scored, key=lambda e: ranking(e[1], e[0], mode))[0]
    assert best_step == ray_step == (300 if mode == "max" else 400)


def test_a_nan_best_is_replaced_by_the_first_real_score() -> None:
    assert is_better(0.1, math.nan, "max") and is_better(0.1, None, "min")
    assert not is_better(math.nan, 0.1, "max") and not is_better(None, 0.1, "min")


def test_run_files_are_valid_json_with_null_for_non_finite_metrics(tmp_path) -> None:
    metrics = {"val_cider": math.nan, "loss": math.inf, "history": [{"bleu4": -math.inf}]}
    write_json(tmp_path / "metrics.json", metrics)
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"val_cider": None, "loss": None, "history": [{"bleu4": None}]}
    write_predictions(tmp_path / "rows.jsonl", [{"score": math.nan, "id": "a"}])
    assert json.loads((tmp_path / "rows.jsonl").read_text()) == {"score": None, "id": "a"}
