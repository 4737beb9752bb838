"""``jobs/train.py --resume RUN_DIR``: a driver killed (SIGKILL, by PID) or stopped (Ctrl-C)
after its first checkpoint, then resumed, finishes with the evaluations an uninterrupted run
reports and no step redone; a resume that would change the model is refused.

Real local Ray (the driver starts its own: ``RAY_ADDRESS=local``), real checkpoints on disk.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import ROOT, job_env, read_jsonl, run_job, smoke_config, tail

from g4mm.config import ConfigError
from g4mm.train.checkpoint import CHECKPOINT_FILE, load_checkpoint
from g4mm.train.resume import resume_config

MAX_STEPS, EVAL_EVERY = 40, 10  # four evaluations; ~30 s of steps left after the first


def start_job(log: Path, *args: str) -> subprocess.Popen:
    with log.open("w") as fh:
        return subprocess.Popen([sys.executable, "jobs/train.py", *args], cwd=ROOT,
                                env=job_env(), stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip


def wait_for_checkpoint(proc: subprocess.Popen, pattern: str, root: Path, log: Path) -> Path:
    """The first checkpoint file matching ``root.glob(pattern)``, polled while ``proc`` runs."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        assert proc.poll() is None, f"the job ended before its first checkpoint:\n{log.read_text()}"
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"no checkpoint after 400 s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, sig: int) -> None:
    assert proc.poll() is None, "the run finished before it could be stopped: lengthen it"
    proc.send_signal(sig)
    proc.wait(timeout=120)


def budget(artifact_dir: str) -> list[str]:
    return ["--set", f"data.artifact_dir={artifact_dir}", "--set", f"train.max_steps={MAX_STEPS}",
            "--set", f"train.eval_every={EVAL_EVERY}"]  # fmt: skip


def assert_finished_like_an_uninterrupted_run(run: Path, stopped_at: int) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    history = read_jsonl(run / "history.jsonl")
    evaluations = list(range(EVAL_EVERY, MAX_STEPS + 1, EVAL_EVERY))
    assert [h["step"] for h in history] == evaluations  # each once: none redone, none lost
    assert metrics["resumed_from_step"] == stopped_at > 0
    assert {h["resumed_from_step"] for h in history if h["step"] > stopped_at} == {stopped_at}
    assert {h["resumed_from_step"] for h in history if h["step"] <= stopped_at} == {0}
    assert metrics["best_step"] in evaluations and metrics["cider"] >= 0
    assert (run / "checkpoints" / "best" / CHECKPOINT_FILE).is_file()
    # the same MLflow run continued: every evaluation on its curve, and it finished
    from mlflow import MlflowClient

    record = json.loads((run / "mlflow_run.json").read_text())
    client = MlflowClient(record["uri"])
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    curve = client.get_metric_history(record["run_id"], "val_loss")
    # (an evaluation logged after the last checkpoint that persisted is redone: logged twice)
    assert {m.step for m in curve} == set(evaluations)


@pytest.mark.slow
def test_a_sigkilled_ray_train_driver_resumes_from_its_last_checkpoint(artifact_dir, tmp_path):
    run, log = tmp_path / "run", tmp_path / "first.log"
    proc = start_job(log, "--config", "smoke", "--output", str(run), *budget(artifact_dir))
    first = wait_for_checkpoint(proc, f"ray/*/checkpoint_*/{CHECKPOINT_FILE}", run, log)
    time.sleep(1.0)  # let Ray finish writing it (the kill may land on a later one: read below)
    stop(proc, signal.SIGKILL)
    assert not (run / "metrics.json").exists()
    assert int(load_checkpoint(first)["step"]) == EVAL_EVERY
    on_disk = {int(load_checkpoint(p)["step"])
               for p in run.glob(f"ray/*/checkpoint_*/{CHECKPOINT_FILE}")}  # fmt: skip

    resumed = run_job("jobs/train.py", "--resume", str(run))
    assert resumed.returncode == 0, tail(resumed)
    # Ray Train resumes from the latest checkpoint it had registered when the driver died (a
    # directory written in the last instant may not be registered yet: then the one before)
    found = re.search(r"resumed from step (\d+)", resumed.stdout + resumed.stderr)
    assert found, tail(resumed)
    stopped_at = int(found.group(1))
    assert stopped_at in on_disk, (stopped_at, on_disk)
    assert_finished_like_an_uninterrupted_run(run, stopped_at)
    assert len(list((run / "ray").iterdir())) == 1  # the same Ray run continued, not a new one


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_a_stopped_in_process_run_resumes_from_its_last_checkpoint(artifact_dir, tmp_path, sig):
    run, log = tmp_path / "run", tmp_path / "first.log"
    proc = start_job(log, "--config", "smoke", "--output", str(run), "--in-process",
                     *budget(artifact_dir))  # fmt: skip
    wait_for_checkpoint(proc, f"checkpoints/last/{CHECKPOINT_FILE}", run, log)
    stop(proc, sig)
    stopped_at = int(load_checkpoint(run / "checkpoints" / "last")["step"])
    if sig == signal.SIGINT:  # stops cleanly, says where it stands and how to go on
        assert proc.returncode == 130, log.read_text()
        expected = (f"stopped: the last checkpoint (step {stopped_at}) is kept; continue with: "
                    f"python jobs/train.py --resume {run.resolve()} --in-process")  # fmt: skip
        assert expected in log.read_text(), log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()

    resumed = run_job("jobs/train.py", "--resume", str(run))  # in-process: read from the run
    assert resumed.returncode == 0, tail(resumed)
    assert f"resumed from step {stopped_at}" in resumed.stdout, tail(resumed)
    assert_finished_like_an_uninterrupted_run(run, stopped_at)


def test_a_resume_refuses_changes_to_the_model_and_allows_the_budget(artifact_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    smoke_config(artifact_dir).save_yaml(run / "config.yaml")
    cfg = resume_config(run, ["train.max_steps=400", "eval.max_new_tokens=8"])
    assert cfg.train.max_steps == 400 and cfg.eval.max_new_tokens == 8
    with pytest.raises(ConfigError) as err:
        resume_config(run, ["model.alpha=0.9", "train.lr=1.0", "train.max_steps=400"])
    assert "model.alpha: 0.1 -> 0.9" in str(err.value) and "train.lr" in str(err.value)
    assert "train.max_steps" not in str(err.value).split("(a resume may")[0]
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        resume_config(tmp_path / "elsewhere")

    proc = subprocess.run(
        [sys.executable, "jobs/train.py", "--resume", str(run), "--set", "model.alpha=0.9"],
        cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "model.alpha: 0.1 -> 0.9" in proc.stderr, proc.stderr


def test_a_ray_train_run_is_not_resumed_in_process(artifact_dir, tmp_path):
    """Its checkpoints are Ray Train's: --in-process would silently start again from step 0."""
    run = tmp_path / "run"
    run.mkdir()
    smoke_config(artifact_dir).save_yaml(run / "config.yaml")
    (run / "ray_run.json").write_text(json.dumps({"name": "run-1", "storage_path": str(run)}))
    proc = subprocess.run(
        [sys.executable, "jobs/train.py", "--resume", str(run), "--in-process"],
        cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "is a Ray Train run" in proc.stderr, proc.stderr


def test_tracking_never_stops_a_run_and_resolves_relative_sqlite(
    artifact_dir, tmp_path, monkeypatch, capsys
):
    """A store that cannot be reached: one warning, the run goes on untracked; a relative
    ``sqlite:///`` path is made absolute (Ray workers run in other directories)."""
    from g4mm.tracking import open_tracked_run, tracking_uri

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = smoke_config(artifact_dir, "train.tracking_uri=http://127.0.0.1:9")  # discard port
    assert open_tracked_run(down, tmp_path) is None
    assert "warning: MLflow tracking failed" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    relative = smoke_config(artifact_dir, "train.tracking_uri=sqlite:///stores/mlflow.db")
    assert tracking_uri(relative) == f"sqlite:///{tmp_path.resolve() / 'stores' / 'mlflow.db'}"
