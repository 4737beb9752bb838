"""What a user does: `ray start --head` with token auth, then `ray job submit ... jobs/train.py`.

The cluster gets its own free ports, its own ``--temp-dir`` and its own auth token
(``ray get-auth-token --generate`` with HOME pointed at a temp dir, then RAY_AUTH_TOKEN_PATH), so
it never touches a cluster or token of the user's. Teardown does NOT run ``ray stop``: in Ray
2.60 that kills every Ray process of the machine (it matches process names, not a cluster), so
it would also stop other people's clusters; instead the processes of THIS cluster (those naming
its temp dir, and their descendants) are terminated by PID.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # `ray` and the `python` the job's entrypoint runs


def _load_cluster_tools():
    """cluster/simulate.py's port and process helpers (one copy for both cluster tests)."""
    path = ROOT / "cluster" / "simulate.py"
    spec = importlib.util.spec_from_file_location("g4mm_cluster_simulate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_tools = _load_cluster_tools()
free_ports, _stop_cluster = _tools.free_ports, _tools.stop_cluster


@pytest.fixture(scope="module")
def cluster():
    """``ray start --head`` with token auth on free ports; yields (dashboard URL, env)."""
    temp_dir = tempfile.mkdtemp(prefix="g4ray-", dir="/tmp")  # short: Ray's socket paths
    home = Path(temp_dir) / "home"
    home.mkdir()
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0",
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
    )
    # the auth token, created as a user does (`ray get-auth-token --generate` writes
    # ~/.ray/auth_token), but in a HOME of our own: the user's token is left alone
    subprocess.run(
        ["ray", "get-auth-token", "--generate"], env={**env, "HOME": str(home)},
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    token = home / ".ray" / "auth_token"
    assert token.is_file() and token.stat().st_size > 0
    env["RAY_AUTH_TOKEN_PATH"] = str(token)

    gcs, dash, client, agent, agent_grpc, metrics, rt_env, node_mgr, obj_mgr = free_ports(9)
    start = [
        "ray", "start", "--head", "--port", str(gcs),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--num-cpus", "2", "--temp-dir", temp_dir, "--disable-usage-stats",
        "--ray-client-server-port", str(client),
        "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(agent_grpc),
        "--metrics-export-port", str(metrics),
        "--runtime-env-agent-port", str(rt_env),
        "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
    ]  # fmt: skip
    try:
        proc = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"ray start failed:\n{proc.stdout}\n{proc.stderr}"
        yield f"http://127.0.0.1:{dash}", env, temp_dir
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(env: dict, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ray", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_ray_job_submit_trains_the_smoke_config(cluster, artifact_dir, tmp_path):
    address, env, temp_dir = cluster
    run = tmp_path / "run"
    runtime_env = {
        "env_vars": {
            "HF_HUB_OFFLINE": "1",
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
            "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
            # the job's run is tracked in this session's store, not in its working directory
            "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
        },
        "excludes": [".git"],  # .venv/, artifacts/, runs/: Ray honours .gitignore
    }
    started = time.perf_counter()
    submit = _ray(
        env, "job", "submit", "--address", address, "--working-dir", str(ROOT),
        "--runtime-env-json", json.dumps(runtime_env), "--",
        "python", "jobs/train.py", "--config", "smoke", "--output", str(run),
        "--set", f"data.artifact_dir={artifact_dir}",
        timeout=900,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    out = submit.stdout + submit.stderr
    log = f"rc={submit.returncode} ({seconds:.0f}s)\n{out[-8000:]}"
    assert submit.returncode == 0, log  # `ray job submit` waits; exit 0 only on SUCCEEDED
    job_id = next(
        line.split("'")[1] for line in out.splitlines()
        if "Job '" in line and "submitted successfully" in line
    )  # fmt: skip
    assert f"Job '{job_id}' succeeded" in out, log
    assert f"run directory: {run}" in out, log  # the driver's output streams back

    status = _ray(env, "job", "status", "--address", address, job_id)
    assert status.returncode == 0, status
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, status

    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("bleu4", "rougeL", "cider", "loss", "samples_per_s"):
        assert isinstance(metrics[key], (int, float)) and math.isfinite(metrics[key]), key
    assert metrics["resumed_from_step"] == 0
    assert (run / "checkpoints" / "best" / "checkpoint.pt").is_file()

    # the job joined THIS cluster (its storage + logs are under our temp dir), and the
    # uploaded working dir left out the venv, artifacts and runs (gitignored) and .git
    unpacked = Path(temp_dir).glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*")
    pkgs = [p for p in unpacked if p.is_dir()]  # (next to them: .zip.lock files)
    assert pkgs, "no working_dir package unpacked on the node"
    for pkg in pkgs:
        assert (pkg / "jobs" / "train.py").is_file()
        for ignored in (".venv", "artifacts", "runs", ".git"):
            assert not any((pkg / ignored).rglob("*")), ignored

    # without the token the dashboard refuses the client
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token there
    denied = _ray(no_token, "job", "list", "--address", address)
    assert denied.returncode != 0, denied.stdout
    refusal = (denied.stdout + denied.stderr).lower()
    assert any(word in refusal for word in ("401", "unauthori", "token")), refusal[-2000:]


def test_a_job_without_the_token_is_refused(cluster, tmp_path):
    """Under ``RAY_AUTH_MODE=token`` a client that has no token (no RAY_AUTH_TOKEN_PATH, an
    empty HOME) cannot submit: non-zero exit, nothing run."""
    address, env, _ = cluster
    (tmp_path / "home").mkdir()
    stranger = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    stranger["HOME"] = str(tmp_path / "home")
    marker = tmp_path / "ran"
    proc = _ray(stranger, "job", "submit", "--address", address, "--no-wait", "--",
                "touch", str(marker), timeout=120)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "token" in out.lower() or "401" in out or "unauthori" in out.lower(), out[-3000:]
    time.sleep(3)
    assert not marker.exists()
