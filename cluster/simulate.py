"""Simulate the autoscaling of ``cluster/config.yaml`` on one machine (Ray's fake_multinode).

Usage: python cluster/simulate.py [--config cluster/config.yaml] [--experiment NAME]
           [--max-workers 2] [--idle-timeout-minutes 0.1] [--trials 5] [--json OUT]

The worker node types, their resources and per-type min/max_workers are READ from the launcher
config; each simulated node is a real local raylet advertising those resources (fake GPUs: a
logical ``GPU`` resource, no CUDA). Simulation-only overrides, so a 2-core machine holds it: the
global ``max_workers`` cap, ``idle_timeout_minutes``, and ``memory`` is left out of the fake
nodes' resources (a raylet reports its host's memory itself). The head starts like the real one
(CPU 0, token authentication, its own ports and ``--temp-dir``). Then:

1. train: a ``TorchTrainer`` with the ``ScalingConfig`` that ``g4mm.train.ray_train.fit`` builds
   for ``--experiment`` with ``train.use_gpu=true`` (``num_workers`` x ``{"CPU":
   cpus_per_worker, "GPU": 1}``); gloo instead of NCCL, as the GPUs are fake. The cluster
   starts with no workers, so this scales GPU workers up from zero.
2. sweep: while the training job still holds the GPU nodes, Ray Tune submits ``--trials``
   trials, each asking for the sweep's per-trial resources (``tune.cpus_per_trial``, one GPU).
   The cluster is at ``max_workers``: trials queue and run as nodes free up.
3. idle: every worker is removed once idle for ``idle_timeout_minutes``.

A poller records the alive worker nodes per type; the timeline is printed (and written as JSON
with ``--json``). The cluster is torn down by PID (every process naming its temp dir, and their
descendants) even on failure; ``ray stop`` is never run (it stops every Ray on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "cluster" / "config.yaml"
FAKE_HEAD_TYPE = "ray.head.default"  # the fake provider's head node type name
BIN = Path(sys.executable).parent  # `ray` of this interpreter


def load_cluster_config(path: str | Path = CONFIG) -> dict[str, Any]:
    """The launcher config, validated against Ray's schema and filled with Ray's defaults."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(Path(path).read_text()))
    validate_config(config)
    return config


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: node type}`` for every worker node type (the head type left out)."""
    head = config["head_node_type"]
    return {k: v for k, v in config["available_node_types"].items() if k != head}


def fake_multinode_config(
    config: dict[str, Any],
    *,
    gcs_address: str,
    max_workers: int | None = None,
    idle_timeout_minutes: float | None = None,
) -> dict[str, Any]:
    """A fake_multinode cluster config with the node types of ``config``.

    Args:
        config: the launcher config (``load_cluster_config``).
        gcs_address: ``ip:port`` of the simulated head's GCS (the fake nodes join it).
        max_workers: global worker cap (None: the config's).
        idle_timeout_minutes: idle timeout (None: the config's).
    """
    head = config["available_node_types"][config["head_node_type"]]
    types: dict[str, Any] = {
        FAKE_HEAD_TYPE: {
            "resources": dict(head.get("resources", {})),
            "node_config": {},
            "max_workers": 0,
        }
    }
    for name, node_type in worker_types(config).items():
        resources = {k: v for k, v in node_type["resources"].items() if k != "memory"}
        types[name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": node_type.get("min_workers", 0),
            "max_workers": node_type["max_workers"],
        }
    return {
        "cluster_name": f"{config['cluster_name']}-simulated",
        "max_workers": config["max_workers"] if max_workers is None else max_workers,
        "upscaling_speed": config.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": (
            config["idle_timeout_minutes"] if idle_timeout_minutes is None else idle_timeout_minutes
        ),
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": False,
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": FAKE_HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "auth": {},
    }


# ----------------------------------------------------------------------------- the fake cluster


def free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def cluster_processes(temp_dir: str) -> list:
    """Every process whose command line names ``temp_dir``, plus their descendants (the fake
    nodes' raylets are children of the autoscaler; workers are children of raylets)."""
    import psutil

    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in arg for arg in proc.info["cmdline"] or ()):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    # never this process or its callers (a shell or `timeout` may name the temp dir too)
    for proc in [psutil.Process(), *psutil.Process().parents()]:
        found.pop(proc.pid, None)
    return list(found.values())


def stop_cluster(temp_dir: str) -> None:
    """Terminate (then kill) this cluster's processes by PID; other clusters are untouched."""
    import psutil

    procs = cluster_processes(temp_dir)
    for proc in procs:
        with suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        with suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


@contextmanager
def fake_cluster(config: dict[str, Any], temp_dir: str, **overrides):
    """Start a token-authenticated head with ``config``'s node types as a fake_multinode
    autoscaling config; yields ``(gcs_address, env)``; always tears the cluster down."""
    import ray._private.services

    home = Path(temp_dir) / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_FAKE_CLUSTER="1",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
        RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0",
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
    )
    try:
        # the token, made as a user makes it, in a HOME of its own (the user's stays untouched)
        subprocess.run(
            ["ray", "get-auth-token", "--generate"], env={**env, "HOME": str(home)},
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        env["RAY_AUTH_TOKEN_PATH"] = str(home / ".ray" / "auth_token")

        ports = free_ports(9)
        gcs, dash, client, agent, agent_grpc, metrics, rt_env, node_mgr, obj_mgr = ports
        gcs_address = f"{ray._private.services.get_node_ip_address()}:{gcs}"
        fake = fake_multinode_config(config, gcs_address=gcs_address, **overrides)
        fake_path = Path(temp_dir) / "fake_multinode.yaml"
        fake_path.write_text(yaml.safe_dump(fake, sort_keys=False))
        head = fake["available_node_types"][FAKE_HEAD_TYPE]["resources"]
        start = [
            "ray", "start", "--head", "--port", str(gcs),
            "--autoscaling-config", str(fake_path),
            "--num-cpus", str(int(head.get("CPU", 0))), "--num-gpus", str(int(head.get("GPU", 0))),
            "--object-store-memory", str(256 * 1024**2),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
            "--temp-dir", temp_dir, "--disable-usage-stats",
            "--ray-client-server-port", str(client),
            "--dashboard-agent-listen-port", str(agent),
            "--dashboard-agent-grpc-port", str(agent_grpc),
            "--metrics-export-port", str(metrics),
            "--runtime-env-agent-port", str(rt_env),
            "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
        ]  # fmt: skip
        proc = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{proc.stdout}\n{proc.stderr}")
        yield gcs_address, env
    finally:
        stop_cluster(temp_dir)


# ----------------------------------------------------------------------------- the timeline


class NodeTimeline:
    """Polls the alive nodes; records a row whenever the worker count of a type changes, and
    when each worker node came up and went away (``nodes``: id -> type, up, down).

    A node's type is the worker type whose CPU/GPU resources it advertises.
    """

    def __init__(self, types: dict[str, dict[str, Any]], interval_s: float = 0.25) -> None:
        self.types = types
        self.interval_s = interval_s
        self.t0 = time.monotonic()
        self.t0_wall = time.time()  # to place wall-clock events (trial start/end) on the timeline
        self.rows: list[dict[str, Any]] = []
        self.marks: list[dict[str, Any]] = []
        self.nodes: dict[str, dict[str, Any]] = {}
        self._last: dict[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def classify(self, resources: dict[str, float]) -> str | None:
        for name, node_type in self.types.items():
            want = node_type["resources"]
            if all(resources.get(k, 0) == want.get(k, 0) for k in ("CPU", "GPU")):
                return name
        return None

    def counts(self) -> dict[str, int]:
        import ray

        counts = dict.fromkeys(self.types, 0)
        alive = set()
        for node in ray.nodes():
            name = self.classify(node.get("Resources", {}))
            if node.get("Alive") and name is not None:
                counts[name] += 1
                alive.add(node["NodeID"])
                self.nodes.setdefault(node["NodeID"], {"type": name, "up": self.now()})
        for node_id, info in self.nodes.items():
            if node_id not in alive and "down" not in info:
                info["down"] = self.now()
        return counts

    def poll(self) -> dict[str, int]:
        counts = self.counts()
        if counts != self._last:
            self.rows.append({"t": self.now(), "counts": counts, "workers": sum(counts.values())})
            self._last = counts
        return counts

    def mark(self, event: str) -> None:
        self.marks.append({"t": self.now(), "event": event})
        print(f"[{self.now():6.1f}s] {event}", flush=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with suppress(Exception):
                self.poll()
            self._stop.wait(self.interval_s)

    def start(self) -> NodeTimeline:
        self.poll()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def table(self) -> str:
        names = list(self.types)
        events = sorted(
            [(r["t"], 0, r) for r in self.rows] + [(m["t"], 1, m) for m in self.marks],
            key=lambda x: (x[0], x[1]),
        )
        lines = [f"{'t [s]':>7}  " + "".join(f"{n:>6}" for n in names) + "  event"]
        last = dict.fromkeys(names, 0)
        for t, kind, item in events:
            if kind == 0:
                last = item["counts"]
                text = "worker nodes: " + str(item["workers"])
            else:
                text = item["event"]
            lines.append(f"{t:7.1f}  " + "".join(f"{last[n]:>6}" for n in names) + f"  {text}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the workloads


def _train_fn(config: dict[str, Any]) -> None:
    """One DDP rank: all-reduce over gloo, note where it ran, hold the GPUs a moment."""
    import ray
    import ray.train
    import torch
    import torch.distributed as dist

    context = ray.train.get_context()
    ones = torch.ones(1)
    dist.all_reduce(ones)
    record = {
        "rank": context.get_world_rank(),
        "world_size": int(ones.item()),
        "node": ray.get_runtime_context().get_node_id(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    out = Path(config["out"])
    (out / f"rank{record['rank']}.json").write_text(json.dumps(record))
    time.sleep(config["hold_s"])
    dist.barrier()
    ray.train.report({"world_size": record["world_size"]})


def run_train_job(cfg, out_dir: Path, hold_s: float):
    """The training job's resource request, as ``fit`` builds it for ``cfg`` on GPUs."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    out_dir.mkdir(parents=True, exist_ok=True)
    scaling = ScalingConfig(
        num_workers=cfg.train.num_workers,
        use_gpu=True,
        resources_per_worker={"CPU": cfg.train.cpus_per_worker, "GPU": 1},
    )
    trainer = TorchTrainer(
        _train_fn,
        train_loop_config={"out": str(out_dir), "hold_s": hold_s},
        scaling_config=scaling,
        torch_config=TorchConfig(backend="gloo"),  # fake GPUs: no NCCL
        run_config=RunConfig(name="simulated-train", storage_path=str(out_dir / "storage")),
    )
    result = trainer.fit()
    ranks = [json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json"))]
    return {
        "error": None if result.error is None else repr(result.error),
        "num_workers": scaling.num_workers,
        "resources_per_worker": scaling.resources_per_worker,
        "ranks": ranks,
    }


def _trial(config: dict[str, Any]) -> None:
    """A sweep trial that does little work: records where and when it ran."""
    import ray
    from ray import tune

    start = time.time()
    time.sleep(config["work_s"])
    tune.report(
        {
            "start": start,
            "end": time.time(),
            "node": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }
    )


def run_sweep(cfg, num_trials: int, work_s: float, storage: Path):
    """``num_trials`` trials at once (no Tune concurrency cap: the cluster's cap is the limit),
    each asking for the sweep's per-trial resources on a GPU cluster."""
    from ray import tune

    resources = {"CPU": cfg.tune.cpus_per_trial, "GPU": max(cfg.tune.gpus_per_trial, 1)}
    tuner = tune.Tuner(
        tune.with_resources(_trial, resources),
        param_space={"work_s": work_s, "i": tune.grid_search(list(range(num_trials)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=num_trials),
        run_config=tune.RunConfig(name="simulated-sweep", storage_path=str(storage), verbose=0),
    )
    grid = tuner.fit()
    trials = []
    for result in grid:
        m = result.metrics or {}
        trials.append(
            {
                "error": None if result.error is None else repr(result.error),
                "start": m.get("start"),
                "end": m.get("end"),
                "node": m.get("node"),
                "gpu_ids": m.get("gpu_ids"),
            }
        )
    return {"resources_per_trial": resources, "trials": trials}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals running at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = running = 0
    for _, step in edges:
        running += step
        best = max(best, running)
    return best


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    from g4mm.config import load_config

    config = load_cluster_config(args.config)
    cfg = load_config(args.experiment, ["train.use_gpu=true", "tune.gpus_per_trial=1"])
    types = worker_types(config)
    temp_dir = args.temp_dir or tempfile.mkdtemp(prefix="g4sim-", dir="/tmp")  # short paths
    Path(temp_dir).mkdir(parents=True, exist_ok=True)
    overrides = {"max_workers": args.max_workers, "idle_timeout_minutes": args.idle_timeout_minutes}
    report: dict[str, Any] = {"overrides": overrides, "temp_dir": temp_dir}
    try:
        with fake_cluster(config, temp_dir, **overrides) as (gcs_address, env):
            os.environ["RAY_AUTH_TOKEN_PATH"] = env["RAY_AUTH_TOKEN_PATH"]
            import ray

            ray.init(address=gcs_address, log_to_driver=False)
            try:
                report.update(_scenario(args, cfg, types, Path(temp_dir)))
            finally:
                ray.shutdown()
    finally:
        if not args.temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
    return report


def _scenario(args, cfg, types, temp_dir: Path) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    timeline = NodeTimeline(types).start()
    result: dict[str, Any] = {"types": {k: v["resources"] for k, v in types.items()}}
    try:
        assert timeline.poll() == dict.fromkeys(types, 0), "the cluster must start without workers"
        timeline.mark(f"train job submitted ({cfg.train.num_workers} GPU workers)")
        train_out = temp_dir / "train"
        with ThreadPoolExecutor(1) as pool:
            train = pool.submit(run_train_job, cfg, train_out, args.hold_s)
            deadline = time.monotonic() + args.timeout_s
            while len(list(train_out.glob("rank*.json"))) < cfg.train.num_workers:
                if train.done() or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            timeline.mark("train workers running")
            timeline.mark(f"sweep submitted ({args.trials} trials)")
            result["sweep"] = run_sweep(cfg, args.trials, args.work_s, temp_dir / "tune")
            timeline.mark("sweep finished")
            result["train"] = train.result(timeout=args.timeout_s)
        deadline = time.monotonic() + args.timeout_s
        while time.monotonic() < deadline and timeline.poll() != dict.fromkeys(types, 0):
            time.sleep(0.5)
        timeline.mark("all workers removed" if timeline.poll() == dict.fromkeys(types, 0)
                      else "timed out waiting for scale-down")  # fmt: skip
    finally:
        timeline.stop()
    trials = result["sweep"]["trials"]
    done = [t for t in trials if t["start"] is not None]
    for i, trial in enumerate(sorted(done, key=lambda t: t["start"])):
        node = f"{timeline.nodes.get(trial['node'], {}).get('type')} node ..{trial['node'][-2:]}"
        for key, verb in (("start", "started"), ("end", "finished")):
            event = f"trial {i} {verb} on {node}"
            timeline.marks.append({"t": round(trial[key] - timeline.t0_wall, 1), "event": event})
    result["sweep"]["max_concurrent_trials"] = max_overlap([(t["start"], t["end"]) for t in done])
    result["timeline"] = timeline.rows
    result["nodes"] = timeline.nodes
    result["t0_wall"] = timeline.t0_wall
    result["marks"] = timeline.marks
    result["table"] = timeline.table()
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG), help="cluster launcher config")
    parser.add_argument(
        "--experiment", default="wikiweb2m-opt125m",
        help="experiment config whose train/tune resources the workloads ask for",
    )  # fmt: skip
    parser.add_argument("--max-workers", type=int, default=2, help="global worker cap (sim)")
    parser.add_argument("--idle-timeout-minutes", type=float, default=0.1)
    parser.add_argument("--trials", type=int, default=5, help="sweep trials")
    parser.add_argument("--work-s", type=float, default=2.0, help="seconds of work per trial")
    parser.add_argument("--hold-s", type=float, default=3.0, help="training job length (s)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per-phase limit")
    parser.add_argument("--temp-dir", help="the cluster's --temp-dir (default: a new one)")
    parser.add_argument("--json", help="write the report (timeline, placements) here")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ray reads the auth mode once, when it is imported: set it before anything imports Ray
    os.environ["RAY_AUTH_MODE"] = "token"
    args = build_parser().parse_args(argv)
    report = simulate(args)
    print(report["table"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
