"""cluster/: the launcher config against Ray's own schema and planner, its autoscaling simulated
with the fake_multinode provider, and train.storage_path as a filesystem URI.

The simulation (``cluster/simulate.py``, run as a subprocess) reads the node types and their
resources from ``cluster/config.yaml``; only the global ``max_workers`` (2) and
``idle_timeout_minutes`` (0.1) are simulation values. Its cluster has its own ports, temp dir
and auth token and is torn down by PID, never with ``ray stop``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from g4mm.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "cluster" / "config.yaml"
SIM_MAX_WORKERS = 2
SIM_IDLE_MINUTES = 0.1
SIM_TRIALS = 5


def _load_simulate():
    path = ROOT / "cluster" / "simulate.py"
    spec = importlib.util.spec_from_file_location("g4mm_cluster_simulate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


simulate = _load_simulate()


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return simulate.load_cluster_config(CONFIG)  # prepare_config + validate_config


# ----------------------------------------------------------------------------- offline checks


def test_config_passes_ray_schema_validation(cluster_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(CONFIG.read_text())
    assert raw["provider"]["type"] == "aws"
    assert cluster_config["idle_timeout_minutes"] > 0
    # the validation is real: misspelled keys, an unknown head type, a bad resource are refused
    misspelled = copy.deepcopy(raw)
    misspelled["idle_timeout_minute"] = misspelled.pop("idle_timeout_minutes")
    misspelled_in_type = copy.deepcopy(raw)
    misspelled_in_type["available_node_types"]["gpu1"]["max_worker"] = 3
    unknown_head = copy.deepcopy(raw)
    unknown_head["head_node_type"] = "ray.head.default"
    bad_resource = copy.deepcopy(raw)
    bad_resource["available_node_types"]["gpu8"]["resources"]["GPU"] = "eight"
    for broken in (misspelled, misspelled_in_type, unknown_head, bad_resource):
        with pytest.raises(Exception):  # noqa: B017 - jsonschema / ValueError, both refusals
            validate_config(prepare_config(broken))


def test_head_runs_no_work_and_token_auth_is_on(cluster_config):
    head = cluster_config["available_node_types"][cluster_config["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"].get("GPU", 0) == 0
    head_start = " ".join(cluster_config["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start and "--num-gpus=0" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cluster_config[commands] if "ray start" in c)
        assert "RAY_AUTH_MODE=token ray start" in start, commands
    # the token `ray get-auth-token --generate` wrote goes to every node
    assert cluster_config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_workers_scale_from_zero_and_install_this_package(cluster_config):
    types = simulate.worker_types(cluster_config)
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert sorted(t["resources"]["GPU"] for t in gpu.values()) == [1, 8]
    for name, node_type in types.items():
        assert node_type["min_workers"] == 0, name
        assert 0 < node_type["max_workers"] <= cluster_config["max_workers"], name
    assert cluster_config["docker"]["image"].startswith("rayproject/ray:")
    setup = cluster_config["setup_commands"]
    assert any("download.pytorch.org/whl/cu" in c and "torch" in c for c in setup)
    assert any("pip install" in c and "-e ~/g4mm" in c for c in setup)
    # the caption metrics (pycocoevalcap's PTB tokenizer) need java, which the image lacks
    assert any("apt-get install" in c and "openjdk-17-jre-headless" in c for c in setup)
    assert "openjdk-17-jre-headless" in (ROOT / "cluster" / "kuberay.yaml").read_text()
    assert cluster_config["file_mounts"]["~/g4mm"] == "."
    assert ".gitignore" in cluster_config["rsync_filter"]


def _plan(cluster_config, demands: list[dict]) -> dict[str, int]:
    """Node types the autoscaler would launch from zero for ``demands`` (Ray's own planner)."""
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilitySummary,
    )
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        get_nodes_for,
    )

    summary = NodeAvailabilitySummary(node_availabilities={})

    def scorer(resources, demand, node_type):
        return _default_utilization_scorer(
            resources, demand, node_type, node_availability_summary=summary
        )

    to_add, unfulfilled = get_nodes_for(
        cluster_config["available_node_types"], {}, cluster_config["head_node_type"],
        cluster_config["max_workers"], demands, scorer,
    )  # fmt: skip
    assert not unfulfilled, unfulfilled
    return dict(to_add)


def _worker_bundle(cfg) -> dict:
    """One Ray Train worker's request, as ``fit`` builds it on a GPU cluster."""
    return {"CPU": cfg.train.cpus_per_worker, "GPU": 1}


def test_planner_puts_each_job_on_the_intended_node_type(cluster_config):
    opt = load_config("wikiweb2m-opt125m", ["train.use_gpu=true"])
    assert _plan(cluster_config, [_worker_bundle(opt)] * opt.train.num_workers) == {
        "gpu1": opt.train.num_workers
    }
    llama = load_config("wikiweb2m-llama1b", ["train.use_gpu=true", "train.num_workers=8"])
    assert _plan(cluster_config, [_worker_bundle(llama)] * 8) == {"gpu8": 1}
    # a sweep with tune.max_concurrent trials of one GPU each, up to 4 at once: gpu1 nodes
    sweep = load_config("wikiweb2m-opt125m", ["tune.gpus_per_trial=1", "tune.max_concurrent=4"])
    trial = {"CPU": sweep.tune.cpus_per_trial, "GPU": sweep.tune.gpus_per_trial}
    assert _plan(cluster_config, [trial] * sweep.tune.max_concurrent) == {"gpu1": 4}
    # CPU-only preprocessing never starts a GPU node, and nothing is planned on the head
    assert _plan(cluster_config, [{"CPU": 1}] * 24) == {"cpu": 2}


def test_fake_multinode_config_reads_the_node_types(cluster_config):
    fake = simulate.fake_multinode_config(
        cluster_config, gcs_address="127.0.0.1:1", max_workers=2, idle_timeout_minutes=0.1
    )
    assert fake["provider"]["type"] == "fake_multinode"
    assert fake["max_workers"] == 2 and fake["idle_timeout_minutes"] == 0.1
    for name, node_type in simulate.worker_types(cluster_config).items():
        want = {k: v for k, v in node_type["resources"].items() if k != "memory"}
        assert fake["available_node_types"][name]["resources"] == want
        assert fake["available_node_types"][name]["max_workers"] == node_type["max_workers"]
        assert fake["available_node_types"][name]["min_workers"] == 0
    assert fake["available_node_types"][simulate.FAKE_HEAD_TYPE]["resources"]["CPU"] == 0


def test_kuberay_manifest_mirrors_the_launcher_config():
    docs = list(yaml.safe_load_all((ROOT / "cluster" / "kuberay.yaml").read_text()))
    cluster = next(d for d in docs if d and d.get("kind") == "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu1", "gpu8", "cpu"}
    for group in groups.values():
        assert group["minReplicas"] == 0 and group["maxReplicas"] > 0
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in groups.values()
    ]
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]


# ----------------------------------------------------------------------------- simulation


@pytest.mark.slow
def test_autoscaling_simulation_scales_up_queues_and_scales_down(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="g4sim-", dir="/tmp")  # short: Ray's socket paths
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONUNBUFFERED="1", RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0")
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "cluster" / "simulate.py"), "--json", str(out),
             "--temp-dir", temp_dir, "--max-workers", str(SIM_MAX_WORKERS),
             "--idle-timeout-minutes", str(SIM_IDLE_MINUTES), "--trials", str(SIM_TRIALS)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        simulate.stop_cluster(temp_dir)  # whatever the driver left behind
        leftover = simulate.cluster_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    seconds = time.perf_counter() - started
    log = f"rc={proc.returncode} ({seconds:.0f}s)\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, log
    assert not leftover, leftover
    report = json.loads(out.read_text())
    print(f"\nsimulated autoscaling ({seconds:.0f}s):\n{report['table']}")

    rows, nodes, marks = report["timeline"], report["nodes"], report["marks"]
    at = {m["event"].split(" (")[0]: m["t"] for m in marks}
    # (1) scale-up from zero: the training job's workers got fresh gpu1 nodes, one rank each
    assert rows[0]["workers"] == 0, log
    train = report["train"]
    assert train["error"] is None, train
    assert train["resources_per_worker"] == {"CPU": 0.5, "GPU": 1}
    ranks = train["ranks"]
    assert len(ranks) == train["num_workers"] == 2 and all(r["world_size"] == 2 for r in ranks)
    assert len({r["node"] for r in ranks}) == 2
    for rank in ranks:
        assert nodes[rank["node"]]["type"] == "gpu1", nodes
        assert nodes[rank["node"]]["up"] > at["train job submitted"]
        assert rank["gpu_ids"] == ["0"]
    # (2) the sweep queued behind the cap and completed
    trials = report["sweep"]["trials"]
    assert len(trials) == SIM_TRIALS and all(t["error"] is None for t in trials), trials
    assert all(nodes[t["node"]]["type"] == "gpu1" for t in trials)
    assert report["sweep"]["max_concurrent_trials"] <= SIM_MAX_WORKERS < SIM_TRIALS
    # the worker count stays within max_workers (Ray's v1 autoscaler may overshoot for a
    # moment when a launch races its update loop; it then terminates the extra node at once)
    for row, following in zip(rows, [*rows[1:], None], strict=True):
        if row["workers"] > SIM_MAX_WORKERS:
            assert following is not None and following["t"] - row["t"] < 5, rows
    work_nodes = {r["node"] for r in ranks} | {t["node"] for t in trials}
    for t in {row["t"] for row in rows}:
        hosting = [n for n in work_nodes if nodes[n]["up"] <= t < nodes[n].get("down", 1e9)]
        assert len(hosting) <= SIM_MAX_WORKERS
    # (3) each worker removed once idle for the idle timeout (not before), back to zero
    assert rows[-1]["workers"] == 0, rows
    assert all("down" in n for n in nodes.values()), nodes
    idle_s = SIM_IDLE_MINUTES * 60
    for node in {t["node"] for t in trials}:
        last_end = max(t["end"] for t in trials if t["node"] == node) - report["t0_wall"]
        assert idle_s * 0.9 <= nodes[node]["down"] - last_end <= idle_s + 30, (node, last_end)


# ----------------------------------------------------------------------------- storage


def test_storage_path_resolution_and_copy(tmp_path, monkeypatch):
    from g4mm.train.run_dir import copy_run_dir, resolve_storage_path

    monkeypatch.chdir(tmp_path)
    assert resolve_storage_path("s3://bucket/runs?region=us-west-2") == (
        "s3://bucket/runs?region=us-west-2"
    )
    assert resolve_storage_path("file:///abs/runs") == "file:///abs/runs"
    assert resolve_storage_path("shared/runs") == str(tmp_path / "shared" / "runs")
    run = tmp_path / "run-a"
    (run / "checkpoints" / "best").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (run / "checkpoints" / "best" / "checkpoint.pt").write_bytes(b"x")
    where = copy_run_dir(run, f"file://{tmp_path}/bucket")
    assert where == f"file://{tmp_path}/bucket/run-a"
    assert (tmp_path / "bucket" / "run-a" / "checkpoints" / "best" / "checkpoint.pt").is_file()
    assert copy_run_dir(run, str(tmp_path)) == str(run)  # already there: nothing copied


@pytest.mark.slow
def test_train_job_honours_a_storage_path_uri(artifact_dir, tmp_path):
    """``--set train.storage_path=file:///...``: Ray Train's checkpoints and the run's results
    (config, metrics, predictions, best checkpoint) land there, not under the run directory."""
    store = tmp_path / "bucket" / "runs"
    uri = f"file://{store}"
    run = tmp_path / "run"
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", RAY_DATA_DISABLE_PROGRESS_BARS="1", PYTHONUNBUFFERED="1",
        RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0",
        RAY_ADDRESS="local",  # a fresh local Ray: never a cluster someone else runs here
    )  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "jobs/train.py", "--config", "smoke", "--output", str(run),
         "--set", f"data.artifact_dir={artifact_dir}", "--set", f"train.storage_path={uri}",
         "--set", "train.num_workers=1", "--set", "train.max_steps=4",
         "--set", "train.eval_every=2", "--set", "train.warmup_steps=1",
         "--set", "eval.max_samples=4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = f"rc={proc.returncode} ({time.perf_counter() - started:.0f}s)\n"
    log += f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, log
    assert f"run directory copied to {uri}/{run.name}" in proc.stdout, log

    # Ray Train's own run (checkpoints, state) went to the URI, not to <run>/ray
    assert not (run / "ray").exists(), log
    experiments = [p for p in store.glob(f"{run.name}-*") if p.is_dir()]
    assert len(experiments) == 1, sorted(store.iterdir())
    checkpoints = sorted(p for p in experiments[0].glob("checkpoint_*") if p.is_dir())
    assert (experiments[0] / "checkpoint_manager_snapshot.json").is_file()
    assert checkpoints and all((c / "checkpoint.pt").is_file() for c in checkpoints), checkpoints
    # the results beside them
    results = store / run.name
    for name in ("config.yaml", "metrics.json", "predictions.jsonl", "history.jsonl"):
        assert (results / name).is_file(), name
    assert (results / "checkpoints" / "best" / "checkpoint.pt").is_file()
    assert json.loads((results / "metrics.json").read_text()) == json.loads(
        (run / "metrics.json").read_text()
    )
    saved = yaml.safe_load((results / "config.yaml").read_text())
    assert saved["train"]["storage_path"] == uri
