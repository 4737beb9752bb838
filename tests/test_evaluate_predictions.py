"""``jobs/evaluate.py --predictions``: scoring a predictions file without a model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from g4mm.eval import caption_metrics, paper_caption_metrics

ROOT = Path(__file__).resolve().parents[1]
GOOD = [
    {"sample_id": "a", "prediction": "The cat sat. It slept", "reference": "the cat sat"},
    {"prediction": "a dog runs", "reference": ["a dog runs", "one dog runs"], "extra": 1},
    {"prediction": "red box", "reference": "a red box here"},
]


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "evaluate.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_scores_a_file_under_each_protocol(tmp_path):
    file = write_lines(tmp_path / "p.jsonl", [json.dumps(r) for r in GOOD] + [""])  # blank: ok
    preds = [r["prediction"] for r in GOOD]
    refs = [r["reference"] for r in GOOD]
    expected = {**caption_metrics(preds, refs), **paper_caption_metrics(preds, refs)}
    for protocol, prefix in (("both", None), ("coco", False), ("paper", True)):
        out = tmp_path / f"{protocol}.json"
        proc = evaluate("--predictions", str(file), "--protocol", protocol, "--json", str(out))
        assert proc.returncode == 0, proc.stderr
        assert "3 predictions" in proc.stdout
        scores = json.loads(out.read_text())
        wanted = {k for k in expected if prefix is None or k.startswith("paper_") == prefix}
        assert set(scores) == wanted
        for key in wanted:
            assert scores[key] == pytest.approx(expected[key]), key


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([json.dumps(GOOD[0]), "{not json"], "line 2: not JSON"),
        ([json.dumps(GOOD[0]), json.dumps({"reference": "x"})], "line 2: no string 'prediction'"),
        (["", json.dumps({"prediction": "x"})], "line 2: no 'reference'"),
        ([json.dumps({"prediction": "x", "reference": []})], "line 1: 'reference' must be"),
        ([json.dumps(["x", "y"])], "line 1: expected a JSON object"),
        ([], "empty, no predictions"),
    ],
)
def test_bad_files_fail_naming_the_line(tmp_path, lines, message):
    file = write_lines(tmp_path / "bad.jsonl", lines)
    proc = evaluate("--predictions", str(file))
    assert proc.returncode == 1
    assert message in proc.stderr and str(file) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_file_and_argument_errors(tmp_path):
    proc = evaluate("--predictions", str(tmp_path / "nope.jsonl"))
    assert proc.returncode == 1 and "no such predictions file" in proc.stderr
    proc = evaluate("--predictions", "x.jsonl", "--checkpoint", "y")
    assert proc.returncode == 2 and "not allowed with" in proc.stderr
