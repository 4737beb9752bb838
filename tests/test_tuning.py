"""Sweeps: search spaces, reports, and tuning/search.py end to end on real local Ray (2 CPUs).

The end-to-end tests run ``python tuning/search.py`` in subprocesses (``RAY_ADDRESS=local``: a
fresh local Ray with its dashboard on a free port, never someone else's cluster) on the
``smoke`` config with shorter training, against the session's shared artifact dir (tiny
backbones built once, as in tests/test_train.py) and a preprocess cache root private to this
module, so the first search must compute the features and every later call must hit the cache.
"""

from __future__ import annotations

import csv
import json
import math
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from g4mm.config import ConfigError, load_config
from g4mm.tune.records import TrialRecord, best_record, leaderboard_rows, write_leaderboard
from g4mm.tune.report import ablation_table, param_importances, plot_sweep, write_ablation
from g4mm.tune.space import GRID_TARGETS, SpaceError, grid_params, load_space, trial_config

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "tuning" / "spaces"
PNG = b"\x89PNG\r\n\x1a\n"
HOP_DIFFUSED_BASED = {"hop_diffused", "no_text_structure", "no_image_structure"}
QFORMER_VARIANTS = HOP_DIFFUSED_BASED | {"hop_aware"}
OUTPUT_FILES = ("config.yaml", "space.yaml", "sweep.json", "leaderboard.csv", "leaderboard.md",
                "best.yaml", "importances.json", "ablation.md", "ablation.csv",
                "metric_by_variant.png", "summary.json", "preprocess.json")  # fmt: skip
#: Shorter smoke training: 12 steps, evaluated every 4 -> 3 rounds for ASHA.
SHORT = ("--set", "train.max_steps=12", "--set", "train.eval_every=4")
JOB_TIMEOUT = 420


# ------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_API_SERVER_ADDRESS", None)
    env.update(
        HF_HUB_OFFLINE="1",
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS="0",
        PYTHONUNBUFFERED="1",
        RAY_ADDRESS="local",  # a fresh local Ray: never a user's running cluster
    )
    return env


def search_args(artifact_dir: str, prep_root: Path, output: Path, *args: str) -> list[str]:
    return [
        sys.executable, "tuning/search.py", "--config", "smoke", "--output", str(output),
        "--set", f"data.artifact_dir={artifact_dir}", "--prep-root", str(prep_root),
        "--num-cpus", "2", "--dashboard-port", str(free_port()), *args,
    ]  # fmt: skip


def run(cmd: list[str], timeout: int = JOB_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=job_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def tail(proc: subprocess.CompletedProcess, n: int = 5000) -> str:
    return f"rc={proc.returncode}\nSTDOUT:\n{proc.stdout[-n:]}\nSTDERR:\n{proc.stderr[-n:]}"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def started_ids(stdout: str) -> list[str]:
    """Trial ids from the ``[sweep +Ns] trial <id> started: ...`` progress lines."""
    return [line.split(" trial ")[1].split()[0] for line in stdout.splitlines()
            if line.startswith("[sweep") and " started: " in line]  # fmt: skip


def committed_keys(prep_root: Path) -> list[str]:
    return sorted(p.name for p in prep_root.iterdir() if (p / "DONE").is_file())


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def prep_root(tmp_path_factory) -> Path:
    """A preprocess cache root of this module's own: empty before the first search."""
    return tmp_path_factory.mktemp("tune-prep")


@pytest.fixture(scope="module")
def searched(artifact_dir, prep_root, tmp_path_factory, mlflow_server):
    """The 4-trial smoke search, once, tracked on a real MLflow server: ``(completed process,
    output dir)``."""
    assert committed_keys(prep_root) == []
    out = tmp_path_factory.mktemp("search") / "sweep"
    proc = run(search_args(artifact_dir, prep_root, out, "--num-samples", "4", *SHORT,
                           "--set", f"train.tracking_uri={mlflow_server}"))  # fmt: skip
    assert proc.returncode == 0, tail(proc)
    return proc, out


# ------------------------------------------------------------------- spaces (no Ray)


def test_default_space_is_define_by_run_with_conditional_parameters():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config("smoke", ["tune.backbones=[tiny, /models/other-lm]"])
    space = load_space("default", SPACES).resolve(cfg)
    assert space.names == ["variant", "alpha", "num_hops", "num_query_tokens", "backbone", "lr"]
    assert space.get("backbone").choices == ("tiny", "/models/other-lm")  # from tune.backbones

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        space(trial)
        p = trial.params
        seen.add(p["variant"])
        assert ("alpha" in p) == ("num_hops" in p) == (p["variant"] in HOP_DIFFUSED_BASED)
        assert ("num_query_tokens" in p) == (p["variant"] in QFORMER_VARIANTS)
        if "alpha" in p:
            assert 0 < p["alpha"] < 1 and 0 <= p["num_hops"] <= 8
        if "num_query_tokens" in p:
            assert 4 <= p["num_query_tokens"] <= 64
        assert 1e-5 <= p["lr"] <= 1e-2 and p["backbone"] in ("tiny", "/models/other-lm")
        study.tell(trial, 0.0)
    assert seen == set(space.get("variant").choices)  # every variant is reachable

    changed = trial_config(cfg, {"variant": "hop_aware", "num_query_tokens": 16, "lr": 3e-3,
                                 "trial_id": "x"}, space.targets)  # fmt: skip
    assert (changed.model.variant, changed.model.num_query_tokens, changed.train.lr) == (
        "hop_aware", 16, 3e-3)  # fmt: skip
    assert changed.model.alpha == cfg.model.alpha  # an absent parameter keeps the config's value
    assert grid_params(["a", "b"], [0, 1]) == [
        {"variant": "a", "seed": 0}, {"variant": "a", "seed": 1},
        {"variant": "b", "seed": 0}, {"variant": "b", "seed": 1},
    ]  # fmt: skip
    assert GRID_TARGETS == {"variant": "model.variant", "seed": "train.seed"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("x: {type: float, target: model.alpha, low: 0.5, high: 0.1}", "low = 0.5 > high"),
        ("x: {type: normal, target: model.alpha, low: 0, high: 1}", "type = 'normal'"),
        ("x: {type: int, target: model.alpah, low: 0, high: 3}", "target = 'model.alpah'"),
        ("x: {type: float, target: train.lr, low: 0, high: 1, log: true}", "log scale"),
        ("x: {type: int, target: model.num_hops, low: 0, high: 3, when: {v: [a]}}",
         "earlier categorical"),
        ("x: {type: categorical, target: model.lm, choices: [a], low: 1}", "do not apply"),
        ("x: {type: categorical, target: model.lm, choices: [a], colour: red}", "unknown keys"),
        ("x: {type: categorical, target: model.lm, choices: [a]}\n"
         "  y: {type: categorical, target: model.lm, choices: [b]}", "already set by 'x'"),
    ],
)  # fmt: skip
def test_malformed_spaces_are_refused_with_the_parameter_named(tmp_path, body, expected):
    path = tmp_path / "space.yaml"
    path.write_text(f"parameters:\n  {body}\n")
    with pytest.raises(SpaceError, match=expected):
        load_space(str(path))


def test_space_values_are_checked_against_the_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "parameters:\n"
        "  variant: {type: categorical, target: model.variant, choices: [hop_difused]}\n"
        "  alpha: {type: float, target: model.alpha, low: 0.1, high: 1.0}\n"
    )
    with pytest.raises(SpaceError) as err:
        load_space(str(path)).resolve(load_config("smoke"))
    text = str(err.value)
    assert "alpha = 1.0" in text and "(0, 1)" in text and "did you mean 'hop_diffused'" in text
    with pytest.raises(SpaceError, match="not found"):
        load_space("no-such-space", SPACES)
    assert isinstance(err.value, ConfigError)


# ------------------------------------------------------------------- reports (no Ray)


def _record(i: int, variant: str, score: float | None, status: str = "completed", **params):
    metrics = {"test_bleu4": score / 10, "test_rougeL": score / 2, "test_cider": score} if (
        status == "completed" and score is not None) else {}  # fmt: skip
    return TrialRecord(f"t{i}", status, {"variant": variant, "backbone": "tiny", "lr": 1e-3 * i,
                                         **params}, score, metrics, evals=3)  # fmt: skip


def test_reports_from_records(tmp_path):
    space = load_space("default", SPACES).resolve(load_config("smoke"))
    records = [
        _record(1, "hop_diffused", 0.5, alpha=0.2, num_hops=3, num_query_tokens=8),
        _record(2, "hop_diffused", 0.7, alpha=0.4, num_hops=5, num_query_tokens=8),
        _record(3, "text_only", 0.1),
        _record(4, "mmgl_concat", 0.3, status="stopped"),
        _record(5, "hop_aware", None, status="error", num_query_tokens=4),
    ]
    rows = leaderboard_rows(records, space.names, "val_cider", ["bleu4", "rougeL", "cider"], "max")
    assert [r["trial_id"] for r in rows] == ["t2", "t1", "t4", "t3", "t5"]
    assert {"variant", "alpha", "num_hops", "num_query_tokens", "backbone", "lr", "val_cider",
            "test_cider", "status", "train_s"} <= set(rows[0])  # fmt: skip
    csv_path, md_path = write_leaderboard(tmp_path, rows, "demo")
    table = read_csv(csv_path)
    assert table[2]["alpha"] == "" and table[0]["alpha"] == "0.4"
    assert md_path.read_text().count("\n| ") == 6  # header + 5 trials
    assert best_record(records, "max").trial_id == "t2"
    assert best_record(records, "min").trial_id == "t3"  # completed beats stopped

    few = param_importances(records[:2], space, "max")
    assert few["importances"] == {} and "at least" in few["note"]
    more = [*records, _record(6, "hop_diffused", 0.2, alpha=0.9, num_hops=1, num_query_tokens=8)]
    imp = param_importances(more, space, "max")
    assert imp["trials"] == 4 and set(imp["importances"]) <= {"variant", "lr"}
    assert "alpha" in imp["note"]  # conditional: named as left out, not crashing

    grid = [
        _record(i, v, s)
        for i, (v, s) in enumerate(
            [("hop_diffused", 0.6), ("hop_diffused", 0.8), ("text_only", 0.2), ("text_only", 0.2)]
        )
    ]
    rows = ablation_table(grid, ["bleu4", "rougeL", "cider"], "max", "mean")
    assert [r["variant"] for r in rows] == ["text_only", "hop_diffused"]  # paper order
    assert rows[1]["cider"] == pytest.approx(0.7) and rows[1]["cider_std"] > 0
    md, _ = write_ablation(tmp_path, rows, ["bleu4", "rougeL", "cider"], "demo")
    text = md.read_text()
    assert "| Variant | BLEU-4 | ROUGE-L | CIDEr | trials |" in text
    assert "| Graph4MM Hop-Diffused (full) | 0.0700 ± 0.0141 |" in text
    acc = ablation_table([_record(1, "hop_aware", 0.9)], ["accuracy"], "max", "best")
    assert acc[0]["accuracy"] is None  # no test_accuracy reported: shown as a dash
    paths = plot_sweep(tmp_path, records, space, "val_cider")
    assert all(path.read_bytes()[:8] == PNG for path in paths)
    assert {p.name for p in paths} >= {"metric_vs_alpha.png", "metric_by_variant.png"}
    # a grid: alpha and K not searched, so no empty plots for them; the seed is no parameter
    from g4mm.tune.plan import grid_space

    grid_records = [TrialRecord(f"g{i}", "completed", {"variant": v, "seed": s}, 0.1 * i + s,
                                {"test_cider": 0.1 * i}, evals=3)
                    for i, (v, s) in enumerate([(v, s) for v in ("hop_diffused", "text_only")
                                                for s in (0, 1, 2)])]  # fmt: skip
    out = tmp_path / "grid"
    out.mkdir()
    gspace = grid_space(["hop_diffused", "text_only"], [0, 1, 2])
    assert [p.name for p in plot_sweep(out, grid_records, gspace, "val_cider")] == [
        "metric_by_variant.png"
    ]
    assert set(param_importances(grid_records, gspace, "max")["importances"]) <= {"variant"}


def test_library_sweep_modules_do_not_import_ray():
    code = (
        "import sys, g4mm.tune, g4mm.tune.space, g4mm.tune.records, g4mm.tune.report, "
        "g4mm.tune.plan, g4mm.tune.outputs; "
        "leaks = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')); "
        "print(leaks); sys.exit(1 if leaks else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------- end to end (Ray)


def test_search_help():
    proc = run([sys.executable, "tuning/search.py", "--help"], timeout=120)
    assert proc.returncode == 0, tail(proc)
    for flag in ("--config", "--set", "--num-samples", "--max-concurrent", "--space", "--metric",
                 "--output", "--resume", "--grid", "--seeds", "--runner"):  # fmt: skip
        assert flag in proc.stdout


def test_resume_names_the_ignored_flags_as_typed():
    """--resume reuses the saved config and says which flags it ignores, by their names."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tuning"))
    import search

    parser = search.build_parser()
    args = parser.parse_args(["--set", "train.lr=0.1", "--metric", "loss", "--prep-root", "p"])
    assert search._explicit(args, parser) == ["--set", "--metric", "--prep-root"]


@pytest.mark.slow
def test_four_trial_smoke_search_writes_every_output(searched, artifact_dir, prep_root):
    from g4mm.pipeline.cache import cache_key

    proc, out = searched
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    assert (out / "metric_by_variant.png").read_bytes()[:8] == PNG
    for name in ("metric_vs_alpha.png", "metric_vs_num_hops.png"):  # when the value varied
        assert not (out / name).exists() or (out / name).read_bytes()[:8] == PNG, name
    # progress on the console: the plan, each trial's start and evaluations, a running count
    assert "[sweep] search: 4 trials" in proc.stdout
    assert len(started_ids(proc.stdout)) == 4
    assert "4/4 trials done" in proc.stdout and " eval 1 (step 4)" in proc.stdout

    # the resolved config, as the trials saw it
    cfg = load_config(out / "config.yaml")
    assert cfg.name == "smoke" and cfg.tune.num_samples == 4 and cfg.train.max_steps == 12
    assert cfg.data.artifact_dir == str(Path(artifact_dir).resolve())

    rows = read_csv(out / "leaderboard.csv")
    assert len(rows) == 4
    searched_columns = ["variant", "alpha", "num_hops", "num_query_tokens", "backbone", "lr"]
    assert {"trial_id", "status", *searched_columns, "val_cider", "test_bleu4", "test_rougeL",
            "test_cider", "train_s", "trial_s", "evals"} <= set(rows[0])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] + summary["stopped"] == 4 and summary["error"] == 0
    assert summary["completed"] >= 1 and not summary["interrupted_run"]
    for row in rows:
        assert row["status"] in ("completed", "stopped")
        assert (row["alpha"] != "") == (row["variant"] in HOP_DIFFUSED_BASED), row
        assert (row["num_query_tokens"] != "") == (row["variant"] in QFORMER_VARIANTS), row
        assert row["backbone"] == "tiny" and math.isfinite(float(row["val_cider"]))
        if row["status"] == "completed":
            assert row["test_cider"] != "" and int(row["evals"]) == 3
            assert float(row["train_s"]) > 0
        trial_cfg = load_config(out / "trials" / row["trial_id"] / "config.yaml")
        assert trial_cfg.model.variant == row["variant"]
        assert trial_cfg.train.lr == pytest.approx(float(row["lr"]))

    # best.yaml is a full experiment config that jobs/train.py --config accepts
    best = load_config(out / "best.yaml")
    top = next(r for r in rows if r["trial_id"] == summary["best_trial"])
    assert best.model.variant == top["variant"] and best.train.lr == pytest.approx(float(top["lr"]))
    assert best.data.artifact_dir == cfg.data.artifact_dir and best.train.max_steps == 12
    importances = json.loads((out / "importances.json").read_text())
    assert importances["importances"] or importances["note"]
    assert "| Variant | BLEU-4 | ROUGE-L | CIDEr |" in (out / "ablation.md").read_text()

    # the features were computed once, before the trials; every trial read that cache entry
    key = cache_key(cfg)
    assert committed_keys(prep_root) == [key]
    (call,) = json.loads((out / "preprocess.json").read_text())
    assert [(e["cache_key"], e["cache_hit"]) for e in call["entries"]] == [(key, False)]
    prep_keys = {json.loads(line).get("prep_key") for line in _last_results(out)}
    assert prep_keys <= {key, None} and key in prep_keys

    # an output directory holding a sweep is never overwritten; --resume needs a sweep
    again = run(search_args(artifact_dir, prep_root, out, "--num-samples", "1"), timeout=120)
    assert again.returncode == 2 and "pass --resume" in again.stderr, tail(again)
    empty = run([sys.executable, "tuning/search.py", "--output", str(out / "trials"), "--resume"])
    assert empty.returncode == 2 and "no sweep to resume" in empty.stderr, tail(empty)


def _last_results(out: Path) -> list[str]:
    """The last line of each trial's Tune result.json (the trial's final report)."""
    files = sorted((out / "ray" / "search").glob("*/result.json"))
    assert files, "no Tune result files"
    return [f.read_text().strip().splitlines()[-1] for f in files]


def _interrupt_after(cmd: list[str], marker: str, timeout: float) -> tuple[int, str]:
    """Run ``cmd``; send SIGINT (Ctrl+C) once a stdout line contains ``marker``."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=job_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen, sent, deadline = [], False, time.monotonic() + timeout
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("timed out:\n" + "".join(seen[-80:])) from None
            if line is None:
                break
            seen.append(line)
            if not sent and marker in line:
                proc.send_signal(signal.SIGINT)
                sent = True
        assert sent, "never saw " + marker + ":\n" + "".join(seen[-80:])
        return proc.wait(timeout=60), "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_interrupted_search_resumes_without_redoing_finished_trials(
    searched, artifact_dir, prep_root, tmp_path
):
    out = tmp_path / "sweep"
    cmd = search_args(artifact_dir, prep_root, out, "--num-samples", "3", "--max-concurrent", "1",
                      *SHORT)  # fmt: skip
    rc, first = _interrupt_after(cmd, "1/3 trials done", timeout=JOB_TIMEOUT)
    assert rc == 130, first[-5000:]
    assert "interrupted: resume with" in first
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted_run"]
    finished = [r for r in read_csv(out / "leaderboard.csv")
                if r["status"] in ("completed", "stopped")]  # fmt: skip
    assert len(finished) == 1, first[-5000:]
    done_id = finished[0]["trial_id"]
    metrics_file = out / "trials" / done_id / "metrics.json"
    stamp = metrics_file.stat().st_mtime_ns if metrics_file.exists() else None

    proc = run([sys.executable, "tuning/search.py", "--output", str(out), "--resume",
                "--num-cpus", "2", "--dashboard-port", str(free_port())])  # fmt: skip
    assert proc.returncode == 0, tail(proc)
    assert "[sweep] resuming search: 3 trials" in proc.stdout
    resumed_ids = started_ids(proc.stdout)
    assert resumed_ids and done_id not in resumed_ids  # the finished trial is not rerun
    rows = read_csv(out / "leaderboard.csv")
    assert len(rows) == 3 and len({r["trial_id"] for r in rows}) == 3
    assert all(r["status"] in ("completed", "stopped") for r in rows), rows
    kept = next(r for r in rows if r["trial_id"] == done_id)
    assert kept == {**finished[0], "rank": kept["rank"]}  # same record, untouched
    if stamp is not None:
        assert metrics_file.stat().st_mtime_ns == stamp
    assert set(started_ids(first)) | set(resumed_ids) == {r["trial_id"] for r in rows}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] and not summary["interrupted_run"]

    # MLflow (the session's SQLite store): one parent, one child per trial, none twice
    _, parent, children = sweep_runs(os.environ["MLFLOW_TRACKING_URI"], out)
    assert parent.info.status == "FINISHED"
    names = [c.data.tags["trial_name"] for c in children]
    assert len(names) == 3 and all(
        sum(name.endswith(r["trial_id"]) for name in names) == 1 for r in rows), names  # fmt: skip
    assert all(c.info.status == "FINISHED" for c in children)

    # neither the interrupted run nor the resumed one recomputed the features
    calls = json.loads((out / "preprocess.json").read_text())
    assert [c["resume"] for c in calls] == [False, True]
    assert [len(c["entries"]) for c in calls] == [1, 1]
    assert all(e["cache_hit"] for c in calls for e in c["entries"])
    assert len(committed_keys(prep_root)) == 1


@pytest.mark.slow
def test_grid_of_variants_is_repeatable(searched, artifact_dir, prep_root, tmp_path):
    import torch

    from g4mm.train.local import train_in_process

    out = tmp_path / "grid"
    proc = run(search_args(artifact_dir, prep_root, out, "--grid", "variants", "--variants",
                           "hop_diffused,text_only", "--seeds", "0", "1", *SHORT))  # fmt: skip
    assert proc.returncode == 0, tail(proc)
    rows = read_csv(out / "leaderboard.csv")
    assert sorted((r["variant"], r["seed"]) for r in rows) == [
        ("hop_diffused", "0"),
        ("hop_diffused", "1"),
        ("text_only", "0"),
        ("text_only", "1"),
    ]
    assert all(r["status"] == "completed" for r in rows)  # no early stopping in a grid
    ablation = (out / "ablation.md").read_text()
    assert "seeds [0, 1]" in ablation
    body = [line for line in ablation.splitlines() if line.startswith("| ") and "±" in line]
    assert [line.split(" | ")[0] for line in body] == [
        "| Text only (subgraph text)", "| Graph4MM Hop-Diffused (full)"]  # fmt: skip
    # synthetic-docs: word accuracy per slot of the target sentence, from the predictions
    slots = [line for line in ablation.splitlines()
             if line.startswith("| ") and "±" not in line and line.endswith(" | 2 |")]  # fmt: skip
    assert [line.split(" | ")[0] for line in slots] == [line.split(" | ")[0] for line in body]
    assert all(0.0 <= float(v) <= 1.0 for line in slots for v in line.split(" | ")[1:6])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "grid" and summary["asha"] is None
    calls = json.loads((out / "preprocess.json").read_text())
    assert [len(c["entries"]) for c in calls] == [1]
    assert all(e["cache_hit"] for c in calls for e in c["entries"])

    # repeatable: the same variant and seed trained again here gives the same test metrics
    row = next(r for r in rows if (r["variant"], r["seed"]) == ("hop_diffused", "0"))
    cfg = load_config(out / "trials" / row["trial_id"] / "config.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial (tune.cpus_per_trial = 1)
    try:
        again = train_in_process(cfg, str(prep_root / committed_keys(prep_root)[0]),
                                 tmp_path / "again", log=lambda _: None)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    for metric in ("bleu4", "rougeL", "cider"):
        assert again[f"test_{metric}"] == pytest.approx(float(row[f"test_{metric}"]), abs=1e-9)


def test_the_query_token_axis_follows_the_token_placement():
    """After the text the axis is num_query_tokens, at the images tokens_per_image: a
    config field in `when` keeps a parameter to the sweeps where it holds."""
    after = load_space("default", SPACES).resolve(load_config("default"))
    at = load_space("default", SPACES).resolve(load_config("wikiweb2m-opt125m"))
    assert "num_query_tokens" in after.names and "tokens_per_image" not in after.names
    assert "tokens_per_image" in at.names and "num_query_tokens" not in at.names
    assert at.get("tokens_per_image").when["variant"][-1] == "mmgl_gnn"  # MMGL's too
    assert "model.token_placement in ['at_images']" in load_space("default", SPACES).get(
        "tokens_per_image"
    ).describe()


def test_a_when_naming_neither_a_parameter_nor_a_field_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "parameters:\n  lr: {type: float, target: train.lr, low: 0.001, high: 0.1,\n"
        "       when: {model.no_such_field: [1]}}\n"
    )
    with pytest.raises(SpaceError, match="earlier categorical parameter or a config field"):
        load_space(str(bad), SPACES)


def test_a_search_over_several_backbones_tries_each_first():
    cfg = load_config("smoke", ["tune.backbones=[tiny, smollm2-135m]"])
    space = load_space("default", SPACES).resolve(cfg)
    assert space.first_points() == [{"backbone": "tiny"}, {"backbone": "smollm2-135m"}]
    assert load_space("default", SPACES).resolve(load_config("smoke")).first_points() == []


# ------------------------------------------------------------------------ MLflow tracking


def sweep_runs(url: str, out: Path):
    """(parent run, child runs) of the sweep in ``out``, read back through MLflow's client."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("smoke")
    parents = client.search_runs([experiment.experiment_id],
                                 f"tags.kind = 'sweep' and tags.sweep_dir = '{out}'")  # fmt: skip
    assert len(parents) == 1, [p.info.run_name for p in parents]
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'"
    )
    return client, parents[0], children


@pytest.mark.slow
def test_the_sweep_is_a_parent_run_with_one_child_per_trial(searched, mlflow_server):
    _, out = searched
    client, parent, children = sweep_runs(mlflow_server, out)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["mode"] == "search" and "space.variant" in parent.data.params
    assert parent.data.metrics["trials"] == 4
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "leaderboard.csv", "ablation.md", "summary.json", "config.yaml"}  # fmt: skip

    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    by_trial = {c.data.tags["trial_name"]: c for c in children}
    assert len(by_trial) == 4
    for child in children:
        assert "variant" in child.data.params  # the trial's sampled parameters
        curve = client.get_metric_history(child.info.run_id, "val_loss")
        steps = [m.step for m in curve]
        assert steps and steps == sorted(steps) and set(steps) <= {4, 8, 12}, steps  # optimizer
        files = {a.path for a in client.list_artifacts(child.info.run_id)}
        if "test_cider" in child.data.metrics:  # ran to its end (not stopped by ASHA)
            assert {"predictions.jsonl", "metrics.json", "config.yaml"} <= files, files
    finished = [c for c in children if "test_cider" in c.data.metrics]
    assert finished, "no trial ran to its test"


@pytest.mark.slow
def test_the_mlflow_ui_renders_the_sweep_in_headless_chromium(searched, mlflow_server, tmp_path):
    """The UI's run page, rendered by a real browser: it shows the run's name and a metric."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is needed (.ci/run installs Debian's chromium)"
    _, out = searched
    _, parent, _ = sweep_runs(mlflow_server, out)
    page = f"{mlflow_server}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
         page],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    dom = proc.stdout
    assert proc.returncode == 0 and "MLflow" in dom, proc.stderr[-2000:]
    text = re.sub(r"<[^>]+>", " ", dom)
    assert out.name in text  # the run's name
    assert re.search(r"trials\s+4\b", text), text[:3000]  # a metric, with its value
