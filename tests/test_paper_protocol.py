"""The paper's scoring protocol (g4mm.eval.paper_protocol) against values computed by hand."""

from __future__ import annotations

import math

import pytest

from g4mm.eval import caption_metrics, paper_caption_metrics, score_captions
from g4mm.eval.paper_protocol import cut_at_first_period


def test_cut_at_first_period_as_the_official_code():
    assert cut_at_first_period("The cat sat. It slept.") == "The cat sat"
    assert cut_at_first_period("Hi. a dog runs") == "Hi. a dog runs"  # '.' at index 2 <= 5
    assert cut_at_first_period("Hello. x") == "Hello. x"  # index 5: still kept whole
    assert cut_at_first_period("Hellos. x") == "Hellos"  # index 6: cut
    assert cut_at_first_period("no period") == "no period"
    assert cut_at_first_period("") == ""


PREDICTIONS = ["The cat sat. It slept", "Hi. a dog runs", "red box"]
REFERENCES = [["the cat sat"], ["a dog runs", "Hi. a dog runs"], "a red box here"]


def test_paper_metrics_equal_the_hand_computed_values():
    # tokens after the cut: [The cat sat] [Hi. a dog runs] [red box]; BLEU is case- and
    # punctuation-sensitive ("The" != "the"), corpus-level, closest reference length.
    bp = math.exp(1 - 11 / 9)  # c = 3 + 4 + 2, r = 3 + 4 (closest of 3 and 4) + 4
    p1, p2, p3, p4 = 8 / 9, 5 / 6, 2 / 3, 1 / 1  # clipped matches / candidate n-grams
    expected = {
        "paper_bleu1": bp * p1,
        "paper_bleu2": bp * (p1 * p2) ** (1 / 2),
        "paper_bleu3": bp * (p1 * p2 * p3) ** (1 / 3),
        "paper_bleu4": bp * (p1 * p2 * p3 * p4) ** (1 / 4),
        # ROUGE-L lower-cases and drops punctuation: 1, 1 (best reference), F1(P=1, R=1/2)
        "paper_rougeL": (1 + 1 + 2 / 3) / 3,
    }
    scores = paper_caption_metrics(PREDICTIONS, REFERENCES)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-6), key


def test_paper_cider_reads_raw_strings_and_coco_tokenises_them():
    from pycocoevalcap.cider.cider import Cider

    refs = {0: ["a red box"], 1: ["two blue cats"], 2: ["one green dog"]}
    exact = ["a red box", "two blue cats", "one green dog"]
    cased = ["A red box.", "Two blue cats", "one green dog"]  # "A", "Two", "box." differ raw
    raw, _ = Cider().compute_score(refs, {i: [p] for i, p in enumerate(exact)})
    paper = paper_caption_metrics(cased, [r[0] for r in refs.values()])["paper_cider"]
    coco = caption_metrics(cased, [r[0] for r in refs.values()])["cider"]
    assert paper == pytest.approx(
        Cider().compute_score(refs, {0: ["A red box"], 1: ["Two blue cats"], 2: exact[2:]})[0]
    )  # cut at its '.', then scored on the raw strings
    assert paper < raw - 1.0  # case counts in the paper's protocol...
    assert coco == pytest.approx(caption_metrics(exact, [r[0] for r in refs.values()])["cider"])


def test_score_captions_protocols():
    both = score_captions(PREDICTIONS, REFERENCES, "both")
    assert set(both) == {*caption_metrics(PREDICTIONS, REFERENCES),
                         *paper_caption_metrics(PREDICTIONS, REFERENCES)}  # fmt: skip
    assert set(score_captions(PREDICTIONS, REFERENCES, "paper")) == {
        "paper_bleu1", "paper_bleu2", "paper_bleu3", "paper_bleu4", "paper_rougeL", "paper_cider"
    }  # fmt: skip
    # the two protocols disagree on this example (module docstring of g4mm.eval.metrics)
    one = score_captions(["The cat sat. It slept"], ["the cat sat"], "both")
    assert one["bleu1"] == pytest.approx(3 / 5, abs=1e-6)  # "the cat sat it slept"
    assert one["paper_bleu1"] == pytest.approx(2 / 3, abs=1e-6) and one["paper_rougeL"] == 1.0
    with pytest.raises(ValueError, match="protocol"):
        score_captions(PREDICTIONS, REFERENCES, "nist")
    with pytest.raises(ValueError, match="no reference"):
        paper_caption_metrics(["a"], [[]])
    with pytest.raises(ValueError, match="2 references"):
        paper_caption_metrics(["a"], ["a", "b"])


def test_a_perfect_prediction_loses_the_references_last_word():
    # the official protocol cuts the prediction before its '.', not the reference: the
    # reference's last word keeps its period and cannot match (docs/science.md)
    scores = paper_caption_metrics(["two red boxes."], ["two red boxes."])
    assert scores["paper_bleu1"] == pytest.approx(2 / 3, abs=1e-6)
    assert scores["paper_rougeL"] == 1.0  # ROUGE drops punctuation
    assert caption_metrics(["two red boxes."], ["two red boxes."])["bleu1"] == pytest.approx(1.0)
