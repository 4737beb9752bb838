"""jobs/train.py and jobs/evaluate.py end to end: real local Ray Train (2 CPUs), real files.

One Ray Train smoke run is shared by the module (``trained``); every job points at ONE artifact
dir per pytest session (tiny backbones + the preprocess cache are built once, also shared with
tests/test_job_submit.py). Subprocesses get ``RAY_ADDRESS=local``: they always start their own
Ray and never join a cluster someone else runs on this machine.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from g4mm.config import load_config
from g4mm.train.checkpoint import CHECKPOINT_FILE, load_checkpoint
from g4mm.train.resume import RAY_RUN_FILE

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
RUN_FILES = {"config.yaml", "metrics.json", "predictions.jsonl", "history.jsonl", "loss.png",
             "metrics.png"}  # fmt: skip
JOB_TIMEOUT = 600


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0",
        PYTHONUNBUFFERED="1",
        RAY_ADDRESS="local",  # a fresh local Ray: never a user's running cluster
    )
    return env


def run_job(script: str, *args: str, timeout: int = JOB_TIMEOUT) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, env=job_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    proc.seconds = time.perf_counter() - start  # type: ignore[attr-defined]
    return proc


def tail(proc: subprocess.CompletedProcess, n: int = 4000) -> str:
    return f"rc={proc.returncode}\nSTDOUT:\n{proc.stdout[-n:]}\nSTDERR:\n{proc.stderr[-n:]}"


@pytest.fixture(scope="module")
def trained(artifact_dir, tmp_path_factory):
    """``python jobs/train.py --config smoke --output RUN`` through Ray Train, once."""
    run = tmp_path_factory.mktemp("train") / "run"
    proc = run_job(
        "jobs/train.py", "--config", "smoke", "--output", str(run),
        "--set", f"data.artifact_dir={artifact_dir}",
    )  # fmt: skip
    assert proc.returncode == 0, tail(proc)
    return proc, run


def smoke_config(artifact_dir: str, *overrides: str):
    return load_config("smoke", [f"data.artifact_dir={artifact_dir}", *overrides])


def prep_dir_of(cfg) -> Path:
    from g4mm.pipeline.cache import cache_key

    key = cache_key(cfg)
    assert key is not None
    path = Path(cfg.data.artifact_dir) / "prep" / key
    assert (path / "report.json").is_file(), path
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_finite_numbers(metrics: dict, keys) -> None:
    for key in keys:
        value = metrics.get(key)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)


# ------------------------------------------------------------------------- the Ray Train job


@pytest.mark.slow
def test_train_job_writes_a_complete_run_dir(trained, artifact_dir):
    from g4mm.data.prepared import read_rows
    from g4mm.model import Graph4MM

    proc, run = trained
    assert f"run directory: {run.resolve()}" in proc.stdout
    assert "test metrics:" in proc.stdout

    expected = smoke_config(artifact_dir)
    expected.data.artifact_dir = str(Path(artifact_dir).resolve())
    assert load_config(run / "config.yaml").to_dict() == expected.to_dict()

    metrics = json.loads((run / "metrics.json").read_text())
    assert_finite_numbers(metrics, ("bleu4", "rougeL", "cider", "loss", "samples_per_s"))
    assert metrics["samples_per_s"] > 0 and metrics["loss"] > 0
    assert metrics["resumed_from_step"] == 0  # a clean run
    assert metrics["best_step"] in (10, 20)

    prep = prep_dir_of(expected)
    report = json.loads((prep / "report.json").read_text())
    predictions = read_jsonl(run / "predictions.jsonl")
    assert len(predictions) == report["samples"]["test"] > 0
    test_ids = [r["sample_id"] for r in read_rows(str(prep), "test")]
    assert [p["sample_id"] for p in predictions] == test_ids
    assert all(isinstance(p["prediction"], str) for p in predictions)
    history = read_jsonl(run / "history.jsonl")
    assert [h["step"] for h in history] == [10, 20]
    counted = ("missing_features.text", "missing_features.image", "truncated_nodes.text")
    assert all(isinstance(h[k], int) and h[k] >= 0 for h in history for k in counted)

    for name in ("loss.png", "metrics.png"):
        data = (run / name).read_bytes()
        assert data[:8] == PNG and len(data) > 1000, name

    ckpt_file = run / "checkpoints" / "best" / CHECKPOINT_FILE
    state = torch.load(ckpt_file, map_location="cpu", weights_only=True)  # loads weights-only
    assert set(state) == {"adapter", "optimizer", "scheduler", "step", "history",
                          "model_signature", "config"}  # fmt: skip
    assert state["step"] == metrics["best_step"]
    model = Graph4MM.from_config(expected.model, artifact_dir=expected.data.artifact_dir)
    adapter_keys = set(model.adapter_state_dict())
    assert set(state["adapter"]) == adapter_keys  # the adapter only
    frozen = {k for k in model.state_dict() if k.startswith(("lm.", "vision."))}
    assert frozen and not any(k.startswith(("lm.", "vision.")) for k in state["adapter"])
    frozen_shapes = {tuple(t.shape) for t in model.lm.state_dict().values() if t.ndim == 2}
    assert not any(tuple(t.shape) in frozen_shapes for t in state["adapter"].values()
                   if t.ndim == 2 and t.numel() > 4096)  # fmt: skip
    trainable = [p for p in model.bare_adapter.parameters() if p.requires_grad]
    assert len(state["optimizer"]["state"]) == len(trainable)  # no frozen parameter optimised
    restored = load_checkpoint(ckpt_file.parent)
    model.load_adapter_state_dict(restored["adapter"])  # strict: loads back


@pytest.mark.slow
def test_the_train_job_console_is_quiet(trained):
    """Each training log line once; none of Ray's per-dataset, per-report or start-up INFO.

    Ray Train's "Setting up process group ..." INFO line reached the console in CI and in full
    runs here (never alone) because a console test leaked G4MM_LOG=debug into every later job:
    those runs were verbose (tests/test_console.py says how)."""
    proc, _ = trained
    lines = (proc.stdout + proc.stderr).splitlines()
    steps = [line for line in lines if "step " in line and "samples/s" in line]
    assert len(steps) == 2 and len(set(steps)) == 2  # log_every 10, 20 steps: once each
    # (Ray Train's "Reporting training result" dump is held back too, by level, but one line of
    # it reached the console in one CI run out of several: not asserted)
    for noise in ("execution finished", "Data sink Parquet",
                  "broadcast_buffers", "Setting up process group", "Loading weights",
                  "PTBTokenizer tokenized"):
        assert not [line for line in lines if noise in line], noise
    assert len(lines) < 60, "\n".join(lines)


@pytest.mark.slow
def test_the_run_is_tracked_in_mlflow(trained, mlflow_store):
    """The default ``train.tracking: mlflow``: params, the curve by optimizer step (logged by
    Ray Train's rank 0 as it happened), test metrics, tags and the run's files, read back
    through MLflow's client from the session's SQLite store."""
    from mlflow import MlflowClient

    proc, run = trained
    record = json.loads((run / "mlflow_run.json").read_text())
    assert record["uri"] == mlflow_store
    client = MlflowClient(mlflow_store)
    tracked = client.get_run(record["run_id"])
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == run.name
    tags = tracked.data.tags
    assert (tags["variant"], tags["backbone"], tags["dataset"]) == (
        "hop_diffused", "tiny", "synthetic-docs")  # fmt: skip
    assert tags["run_dir"] == str(run.resolve()) and len(tags["commit"]) >= 7
    assert tracked.data.params["model.variant"] == "hop_diffused"
    assert tracked.data.params["train.max_steps"] == "20"
    history = read_jsonl(run / "history.jsonl")
    curve = client.get_metric_history(record["run_id"], "val_loss")
    assert [(m.step, m.value) for m in curve] == [(h["step"], pytest.approx(h["val_loss"]))
                                                  for h in history]  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert tracked.data.metrics["test_cider"] == pytest.approx(metrics["cider"])
    assert {a.path for a in client.list_artifacts(record["run_id"])} >= RUN_FILES
    assert "tracked in MLflow: " in proc.stdout


@pytest.mark.slow
def test_worker_crash_resumes_from_the_checkpoint(artifact_dir, tmp_path):
    run = tmp_path / "run"
    proc = run_job(
        "jobs/train.py", "--config", "smoke", "--output", str(run), "--fail-at-step", "10",
        "--set", f"data.artifact_dir={artifact_dir}",
        "--set", "train.max_steps=20", "--set", "train.eval_every=10",
        "--set", "train.bucket_window=4",  # the Ray path's length bucketing, resumed too
        "--set", "train.step_graph=true",  # and the step-graph path under DDP (eager on CPU)
    )  # fmt: skip
    assert proc.returncode == 0, tail(proc)
    assert "length-bucketed batches: sorted by token length in windows of 4" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 10, tail(proc)  # resumed, not restarted from 0
    history = read_jsonl(run / "history.jsonl")
    assert [h["step"] for h in history] == [10, 20]
    assert [h["resumed_from_step"] for h in history] == [0, 10]
    assert_finite_numbers(metrics, ("bleu4", "rougeL", "cider", "loss", "samples_per_s"))
    assert "resumed from step 10" in proc.stdout + proc.stderr
    assert "step graph: data-parallel: gradients averaged" in proc.stdout + proc.stderr
    assert (run / "checkpoints" / "best" / CHECKPOINT_FILE).is_file()


@pytest.mark.slow
def test_in_process_trainer_writes_the_same_files(trained, artifact_dir, tmp_path):
    _, ray_run = trained
    run = tmp_path / "run"
    proc = run_job(
        "jobs/train.py", "--config", "smoke", "--output", str(run), "--in-process",
        "--set", f"data.artifact_dir={artifact_dir}",
    )  # fmt: skip
    assert proc.returncode == 0, tail(proc)
    assert f"run directory: {run.resolve()}" in proc.stdout

    def files(root: Path) -> set[str]:  # ray_run.json: the Ray run's name, for --resume
        return {p.name for p in root.iterdir() if p.is_file()} - {RAY_RUN_FILE}

    assert files(run) == files(ray_run) and files(run) >= RUN_FILES
    assert (run / "checkpoints" / "best" / CHECKPOINT_FILE).is_file()
    ray_metrics = json.loads((ray_run / "metrics.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert_finite_numbers(metrics, ("bleu4", "rougeL", "cider", "loss", "samples_per_s"))
    assert set(ray_metrics) - {"resumed_from_step"} <= set(metrics)
    assert len(read_jsonl(run / "predictions.jsonl")) == len(
        read_jsonl(ray_run / "predictions.jsonl")
    )
    for name in ("loss.png", "metrics.png"):
        assert (run / name).read_bytes()[:8] == PNG
    load_checkpoint(run / "checkpoints" / "best")


# ------------------------------------------------------------------------- jobs/evaluate.py


@pytest.mark.slow
def test_evaluate_reproduces_the_test_metrics(trained, tmp_path):
    _, run = trained
    out = tmp_path / "eval"
    proc = run_job(
        "jobs/evaluate.py", "--checkpoint", str(run / "checkpoints" / "best"), "--output", str(out)
    )
    assert proc.returncode == 0, tail(proc)
    trained_metrics = json.loads((run / "metrics.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    caption = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "cider")
    keys = [*caption, *(f"paper_{k}" for k in caption), "loss"]
    compared = [k for k in keys if k in trained_metrics]
    assert set(keys) == set(compared)  # eval.protocol both: COCO's and the paper's keys
    for key in compared:
        assert metrics[key] == pytest.approx(trained_metrics[key], abs=1e-6), key
    assert metrics["split"] == "test" and metrics["step"] == trained_metrics["best_step"]
    ours = {p["sample_id"]: p["prediction"] for p in read_jsonl(out / "predictions.jsonl")}
    theirs = {p["sample_id"]: p["prediction"] for p in read_jsonl(run / "predictions.jsonl")}
    assert ours == theirs


@pytest.mark.slow
def test_the_library_snippet_in_docs_runs_as_written(trained, artifact_dir):
    text = (ROOT / "docs" / "model.md").read_text()
    code = text.split("## Using the library", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    prep = prep_dir_of(smoke_config(artifact_dir))
    # the only two edits a reader makes: their config and the directory their run printed
    assert code.count('load_config("default")') == 1 and code.count("artifacts/prep/<key>") == 1
    code = code.replace('load_config("default")',
                        f'load_config("smoke", ["data.artifact_dir={artifact_dir}"])')
    code = code.replace("artifacts/prep/<key>", str(prep))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loss, _ = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert float(loss) > 0 and "[" in proc.stdout


@pytest.mark.slow
def test_a_runs_predictions_file_scores_to_its_metrics(trained, tmp_path):
    _, run = trained
    out = tmp_path / "scores.json"
    proc = run_job("jobs/evaluate.py", "--predictions", str(run / "predictions.jsonl"),
                   "--protocol", "both", "--json", str(out))  # fmt: skip
    assert proc.returncode == 0, tail(proc)
    assert "paper" in proc.stdout and "cider" in proc.stdout
    scores = json.loads(out.read_text())
    trained_metrics = json.loads((run / "metrics.json").read_text())
    assert set(scores) == {k for k in trained_metrics if k.removeprefix("paper_") in (
        "bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "cider")}  # fmt: skip
    for key, value in scores.items():
        assert value == pytest.approx(trained_metrics[key], abs=1e-6), key


@pytest.mark.slow
def test_evaluate_refuses_a_checkpoint_of_another_model(trained, artifact_dir):
    _, run = trained
    ckpt = str(run / "checkpoints" / "best")
    for config_args in (
        ["--config", "smoke", "--set", f"data.artifact_dir={artifact_dir}"],  # an explicit config
        [],  # the checkpoint's own config, overridden
    ):
        proc = run_job(
            "jobs/evaluate.py", "--checkpoint", ckpt, *config_args,
            "--set", "model.num_query_tokens=6",
        )  # fmt: skip
        assert proc.returncode != 0, tail(proc)
        assert "model.num_query_tokens" in proc.stderr, tail(proc)
        assert "Traceback" not in proc.stderr, tail(proc)


class _RunsCodeWhenUnpickled:
    """Unpickling this would create ``marker``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil"
    path.mkdir()
    torch.save({"adapter": {}, "hook": _RunsCodeWhenUnpickled(marker)}, path / CHECKPOINT_FILE)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    assert not marker.exists()

    torch.save({"adapter": {}, "fn": os.getcwd}, tmp_path / "fn.pt")  # a pickled callable
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "fn.pt")

    proc = run_job("jobs/evaluate.py", "--checkpoint", str(path))
    assert proc.returncode != 0 and "not a weights-only checkpoint" in proc.stderr, tail(proc)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing")


def test_evaluate_help():
    proc = run_job("jobs/evaluate.py", "--help", timeout=120)
    assert proc.returncode == 0, tail(proc)
    for flag in ("--checkpoint", "--config", "--set", "--split", "--prep-root", "--output"):
        assert flag in proc.stdout


def test_each_rank_and_each_resume_draws_its_own_seeded_stream():
    """A restarted worker must not replay step 0's dropout masks and epoch 0's data order."""
    from g4mm.train.resume import resumed_seed

    assert resumed_seed(7, 0, 0) == 7 and resumed_seed(7, 0, 1) == 8  # the start: seed + rank
    seeds = {resumed_seed(7, step, rank) for step in (0, 10, 20, 30) for rank in range(4)}
    assert len(seeds) == 16


def test_loss_plot_reads_every_logged_train_loss(tmp_path):
    from g4mm.train.run_dir import _train_curve, plot_history

    history = [
        {"step": 20, "train_loss": 1.5, "val_loss": 1.6, "val_cider": 0.5,
         "train_curve": [[10, 2.0], [20, 1.5]]},
        {"step": 40, "train_loss": 1.0, "val_loss": 1.2, "val_cider": 0.9,
         "train_curve": [[30, 1.2], [40, 1.0]]},
    ]  # fmt: skip
    assert _train_curve(history) == ([10, 20, 30, 40], [2.0, 1.5, 1.2, 1.0])
    no_curve = [{k: v for k, v in h.items() if k != "train_curve"} for h in history]
    assert _train_curve(no_curve) == ([20, 40], [1.5, 1.0])  # histories from before the curve
    paths = plot_history(history, tmp_path, {"best_step": 40, "test_cider": 0.8}, "smoke (x)")
    assert [p.name for p in paths] == ["loss.png", "metrics.png"]
    assert all(p.read_bytes()[:8] == PNG for p in paths)
