"""Evaluation: pycocoevalcap caption metrics (real PTB tokenizer via Java), generation,
likelihood-ranked classification and evaluate_rows over tiny real HF models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from g4mm.config import EvalConfig
from g4mm.data.collate import GraphCollator
from g4mm.data.schema import feature_key
from g4mm.eval import (
    CAPTION_METRICS,
    PAPER_CAPTION_METRICS,
    accuracy,
    caption_metrics,
    class_log_likelihoods,
    classification_metrics,
    classify,
    evaluate_rows,
    generate_predictions,
    paper_caption_metrics,
)
from g4mm.model import Graph4MM, build_adapter
from g4mm.model.encoders import image_feature_dim, text_feature_dim
from g4mm.model.layout import LayoutSpec

REFS = [
    "the red circle sits above the blue square",
    "a green triangle with stripes appears in the parent section",
    "products in the same community share colours",
]

# ---------------------------------------------------------------- caption metrics


def test_perfect_predictions_score_one_and_beat_partial_ones_on_cider():
    perfect = caption_metrics(REFS, REFS)
    assert set(perfect) == set(CAPTION_METRICS)
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL"):
        assert perfect[key] == pytest.approx(1.0, abs=1e-6), key
    partial = caption_metrics(
        ["the red circle sits below", "a green square with dots", "products share colours"], REFS
    )
    assert perfect["cider"] > partial["cider"] > 0.0
    assert perfect["bleu4"] > partial["bleu4"]


def test_case_and_punctuation_differences_score_as_perfect_and_dots_do_not_cut():
    exact = caption_metrics(REFS, REFS)
    styled = caption_metrics(
        [
            "The Red circle, sits above the BLUE square.",
            # a '.' mid-sentence: the official code cut predictions here, we never do
            "A green triangle. With stripes appears in the parent section!",
            "Products in the same community share colours ...",
        ],
        REFS,
    )
    for key in CAPTION_METRICS:
        assert styled[key] == pytest.approx(exact[key], abs=1e-9), key
    # references are tokenised by the same call: styling on the reference side is neutral too
    both = caption_metrics(REFS, [r.upper() + "." for r in REFS])
    for key in CAPTION_METRICS:
        assert both[key] == pytest.approx(exact[key], abs=1e-9), key


def test_line_breaks_inside_a_caption_do_not_shift_later_samples():
    # \r and \u2028 are line breaks to the Java tokenizer; unnormalised they misalign samples
    preds = ["the red circle\rsits above the blue\u2028square", REFS[1], REFS[2]]
    scores = caption_metrics(preds, REFS)
    assert scores["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["rougeL"] == pytest.approx(1.0, abs=1e-9)


def test_partially_correct_predictions_score_strictly_between_zero_and_one():
    scores = caption_metrics(
        ["the red circle sits below the green square", "a green triangle", "nothing matches here"],
        REFS,
    )
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL"):
        assert 0.0 < scores[key] < 1.0, (key, scores)
    assert scores["bleu1"] > scores["bleu4"]


def test_empty_predictions_do_not_crash_and_score_low():
    all_empty = caption_metrics(["", "   ", "..."], REFS)
    for key in CAPTION_METRICS:
        assert all_empty[key] == pytest.approx(0.0, abs=1e-6), key
    one_empty = caption_metrics([REFS[0], "", REFS[2]], REFS)
    perfect = caption_metrics(REFS, REFS)
    assert one_empty["rougeL"] == pytest.approx(2 / 3)
    assert one_empty["bleu4"] < perfect["bleu4"] and one_empty["cider"] < perfect["cider"]


def test_bleu_matches_the_formula_worked_by_hand():
    # sample 1: hyp "the cat sat on mat" (5) vs ref "the cat sat on the mat" (6)
    #   clipped matches / hypothesis n-grams: 1-g 5/5, 2-g 3/4, 3-g 2/3, 4-g 1/2
    # sample 2: hyp "A dog runs." -> "a dog runs" (3) vs ref "a dog runs fast" (4)
    #   1-g 3/3, 2-g 2/2, 3-g 1/1, 4-g 0/0
    # corpus pooled: p1 = 8/8, p2 = 5/6, p3 = 3/4, p4 = 1/2; hyp length c = 8, ref length r = 10
    scores = caption_metrics(
        ["the cat sat on mat", "A dog runs."], ["the cat sat on the mat", "a dog runs fast"]
    )
    bp = math.exp(1 - 10 / 8)  # c < r
    p = [1.0, 5 / 6, 3 / 4, 1 / 2]
    for n in range(1, 5):
        expected = bp * math.prod(p[:n]) ** (1 / n)
        assert scores[f"bleu{n}"] == pytest.approx(expected, abs=1e-6), n
    assert scores["bleu4"] == pytest.approx(0.58229, abs=1e-5)  # the number itself, for the eye


def test_multiple_references_and_length_mismatch():
    multi = caption_metrics(["a dog runs fast"], [["a cat sleeps", "a dog runs fast"]])
    assert multi["bleu4"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="2 predictions but 3 references"):
        caption_metrics(["a", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="empty after PTB"):
        caption_metrics(["a b"], ["..."])


def test_accuracy():
    assert accuracy(torch.tensor([1, 2, 3, 4]), [1, 0, 3, 0]) == 0.5
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        accuracy([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="no samples"):
        accuracy([], [])


# ---------------------------------------------------------------- model-based evaluation

CLASS_NAMES = ["red circle", "blue square", "green triangle with stripes", "colours"]
TEXTS = ["red circle", "blue square", "green star", "page about shapes", "stripes"]
IMAGES = ["/img/a.png", "/img/b.png", "/img/c.png"]


@pytest.fixture(scope="module")
def model(tiny_backbones):
    opt, _, vision, processor = tiny_backbones
    lm = copy.deepcopy(opt)
    torch.manual_seed(1)
    adapter = build_adapter(
        "hop_diffused", text_dim=text_feature_dim(lm), image_dim=image_feature_dim(vision),
        lm_dim=lm.get_input_embeddings().embedding_dim, hidden_dim=16, num_heads=2, alpha=0.2,
        num_hops=2, num_query_tokens=2, qformer_layers=1, dropout=0.0, diffusion_impl="dense",
        context="pooled", token_placement="after_text",
    )  # fmt: skip
    return Graph4MM(lm, adapter, copy.deepcopy(vision), None, processor)


@pytest.fixture(scope="module")
def collator(model, tokenizer):
    rng = np.random.default_rng(0)
    tdim, idim = text_feature_dim(model.lm), image_feature_dim(model.vision)
    return GraphCollator(
        tokenizer,
        {feature_key("text", t): rng.normal(size=tdim).astype(np.float32) for t in TEXTS},
        {feature_key("image", p): rng.normal(size=idim).astype(np.float32) for p in IMAGES},
        text_dim=tdim, image_dim=idim,
        layout=LayoutSpec("pooled", "after_text", 24, 4, 3, model.adapter.token_groups),
        max_target_tokens=24,
    )  # fmt: skip


def make_rows(n: int) -> list[dict]:
    prompts = [
        "section summary:",
        "the page describes three shapes and their colours",
        "products in the same community",
        "a green triangle with stripes appears",
    ]
    rows = []
    for i in range(n):
        k = 1 + i % 4
        texts = [TEXTS[(i + j) % len(TEXTS)] for j in range(k)]
        images = IMAGES[: i % 3]
        rows.append({
            "sample_id": f"s#{i}", "split": "test", "prompt": prompts[i % len(prompts)],
            "target_text": REFS[i % len(REFS)], "label": i % len(CLASS_NAMES),
            "zero_shot": i % 3 == 0,
            "text_nodes": texts, "text_hops": [min(j, 2) for j in range(k)],
            "text_edge_src": list(range(1, k)), "text_edge_dst": [0] * (k - 1),
            "image_paths": images, "image_hops": [1] * len(images),
            "image_edge_src": [], "image_edge_dst": [],
        })  # fmt: skip
    return rows


def test_class_log_likelihoods_equal_a_per_class_loop_over_forward_losses(model, collator):
    rows = make_rows(5)
    model.train()  # must be switched to eval inside and restored afterwards
    scores = class_log_likelihoods(model, collator, rows, CLASS_NAMES, batch_size=3)
    assert model.training and model.adapter.training
    assert scores.shape == (5, len(CLASS_NAMES)) and scores.dtype == torch.float32
    model.eval()
    expected = torch.empty(5, len(CLASS_NAMES))
    lengths = torch.empty(len(CLASS_NAMES))
    with torch.no_grad():
        for c, name in enumerate(CLASS_NAMES):
            for i, row in enumerate(rows):
                out = model(collator([{**row, "target_text": name}]))
                expected[i, c] = -out.loss * out.num_target_tokens
                lengths[c] = out.num_target_tokens
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-5)
    assert (scores < 0).all()
    mean = class_log_likelihoods(model, collator, rows, CLASS_NAMES, batch_size=3, score="mean")
    torch.testing.assert_close(mean, expected / lengths, atol=1e-4, rtol=1e-5)
    by_sum = classify(model, collator, rows, CLASS_NAMES, batch_size=7, score="sum")
    by_mean = classify(model, collator, rows, CLASS_NAMES, batch_size=7)  # the default
    assert by_sum.tolist() == expected.argmax(-1).tolist()
    assert by_mean.tolist() == (expected / lengths).argmax(-1).tolist()
    # this untrained model is one where the two differ: the sum picks the shortest name
    assert by_sum.tolist() != by_mean.tolist()
    assert set(by_sum.tolist()) == {int(lengths.argmin())}
    with pytest.raises(ValueError, match="mean.sum"):
        classify(model, collator, rows, CLASS_NAMES, batch_size=7, score="max")
    with pytest.raises(ValueError, match="max_target_tokens"):
        class_log_likelihoods(model, collator, rows, ["red " * 30], batch_size=2)


def test_generate_predictions_equal_decoding_generate_by_hand(model, collator, tokenizer):
    rows = make_rows(5)
    preds = generate_predictions(model, collator, rows, batch_size=2, max_new_tokens=6)
    assert collator.with_targets  # the caller's collator is not mutated
    no_targets = copy.copy(collator)
    no_targets.with_targets = False
    expected = []
    model.eval()
    for start in range(0, len(rows), 2):
        inputs = no_targets(rows[start : start + 2])
        assert inputs.target_ids is None
        tokens = model.generate(inputs, max_new_tokens=6, num_beams=1)
        assert tokens.shape[1] <= 6
        expected += [t.strip() for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    assert preds == expected
    assert len(preds) == 5 and any(preds), preds  # a random LM still emits some text


def test_generated_whitespace_is_stripped(model, collator, tokenizer):
    biased = copy.deepcopy(model)  # the LM now always picks the bare-space token
    space = tokenizer.convert_tokens_to_ids("Ġ")
    biased.lm.generation_config.sequence_bias = {(space,): 100.0}
    no_targets = copy.copy(collator)
    no_targets.with_targets = False
    raw = tokenizer.batch_decode(
        biased.eval().generate(no_targets(make_rows(2)), max_new_tokens=4),
        skip_special_tokens=True,
    )
    assert raw == ["    ", "    "]
    assert generate_predictions(biased, collator, make_rows(2), 2, max_new_tokens=4) == ["", ""]


def test_classification_metrics_by_hand():
    # 4 classes, 2 and 3 held out; rows 0-1 seen, rows 2-4 zero-shot
    scores = torch.tensor([
        [5.0, 1, 0, 0],  # label 0: right
        [5.0, 1, 0, 0],  # label 1: wrong
        [9.0, 0, 3, 1],  # label 2: wrong over all classes, right among the held-out ones
        [9.0, 0, 3, 1],  # label 3: wrong both ways
        [0.0, 0, 1, 4],  # label 3: right both ways
    ])  # fmt: skip
    metrics, predicted = classification_metrics(
        scores, [0, 1, 2, 3, 3], [False, False, True, True, True], [2, 3]
    )
    assert predicted.tolist() == [0, 0, 0, 0, 3]
    assert metrics == pytest.approx({
        "accuracy": 2 / 5, "chance": 1 / 4, "seen_accuracy": 1 / 2,
        "zero_shot_accuracy": 2 / 3, "zero_shot_chance": 1 / 2,
        "zero_shot_accuracy_all_classes": 1 / 3,
    })  # fmt: skip
    seen_only, _ = classification_metrics(scores[:2], [0, 1], [False, False], [2, 3])
    assert set(seen_only) == {"accuracy", "chance", "seen_accuracy"}  # no NaN groups


def test_evaluate_rows_reports_what_the_scores_give(model, collator):
    rows = make_rows(7)
    rows = [{**row, "label": i % len(CLASS_NAMES)} for i, row in enumerate(rows)]
    rows.append({**rows[0], "sample_id": "beyond max_samples", "label": 0})  # must be ignored
    cfg = EvalConfig(batch_size=3, max_samples=7,
                     metrics=["accuracy", "seen_accuracy", "zero_shot_accuracy"])  # fmt: skip
    metrics, samples = evaluate_rows(model, collator, rows, cfg, class_names=CLASS_NAMES)
    scores = class_log_likelihoods(model, collator, rows[:7], CLASS_NAMES, 4, score="mean")
    labels = [r["label"] for r in rows[:7]]
    zero_shot = [bool(r["zero_shot"]) for r in rows[:7]]
    expected, predicted = classification_metrics(scores, labels, zero_shot, None)
    assert set(metrics) == {"loss", *expected} and "zero_shot_accuracy" in metrics
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    assert [s["sample_id"] for s in samples] == [f"s#{i}" for i in range(7)]
    assert [s["predicted_label"] for s in samples] == predicted.tolist()
    assert [s["zero_shot"] for s in samples] == [i % 3 == 0 for i in range(7)]
    assert samples[1]["prediction"] == CLASS_NAMES[predicted[1]]
    # token-weighted loss == the loss of one batch over all 7 rows
    with torch.no_grad():
        full = model(collator(rows[:7]))
    assert metrics["loss"] == pytest.approx(float(full.loss), rel=1e-5)
    with pytest.raises(ValueError, match="class_names"):
        evaluate_rows(model, collator, rows, cfg)


def test_evaluate_rows_generative_reports_every_caption_metric(model, collator):
    rows = make_rows(4)
    cfg = EvalConfig(batch_size=3, max_new_tokens=5, metrics=["bleu4"])
    metrics, samples = evaluate_rows(model, collator, rows, cfg)  # protocol: both
    assert set(metrics) == {"loss", *CAPTION_METRICS, *PAPER_CAPTION_METRICS}
    preds = generate_predictions(model, collator, rows, batch_size=3, max_new_tokens=5)
    assert [s["prediction"] for s in samples] == preds
    assert [s["reference"] for s in samples] == [r["target_text"] for r in rows]
    references = [r["target_text"] for r in rows]
    expected = {**caption_metrics(preds, references), **paper_caption_metrics(preds, references)}
    for key in [*CAPTION_METRICS, *PAPER_CAPTION_METRICS]:
        assert metrics[key] == pytest.approx(expected[key]), key
    cfg.protocol = "paper"
    assert set(evaluate_rows(model, collator, rows, cfg)[0]) == {"loss", *PAPER_CAPTION_METRICS}
    assert all(math.isfinite(v) for v in metrics.values())
