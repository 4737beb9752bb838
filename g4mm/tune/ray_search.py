"""The sweep driver (Ray module): ``tune.Tuner`` + OptunaSearch + ASHA, grid mode, resume.

:func:`run_sweep` does, in order:

1. writes the resolved experiment config (``config.yaml``), the resolved space
   (``space.yaml``) and the sweep settings (``sweep.json``) into the output directory, or, with
   ``resume``, reads them back from there (a resumed sweep is exactly the interrupted one);
2. joins or starts Ray (a local Ray keeps its dashboard on: Train inside Tune needs it);
3. preprocesses ONCE per distinct preprocessing input the trials can ask for (each LM backbone
   of the space, ...) through the content-hash cache (``preprocess.json`` records each call and
   whether it was a cache hit); trials only look their shards up by cache key;
4. runs the trials: a search (define-by-run ``OptunaSearch``, TPE seeded with ``tune.seed``,
   ``ASHAScheduler`` on ``val_<tune.metric>`` per evaluation, ``tune.num_samples`` trials,
   ``tune.max_concurrent`` at once), or ``--grid variants`` (every variant x every seed, no
   early stopping: the ablation table is repeatable), or ``Tuner.restore`` of either;
5. writes the leaderboard, ``best.yaml``, importances, the ablation table, the plots and
   ``summary.json`` (:mod:`g4mm.tune.outputs`) from the trials Tune saved
   (:mod:`g4mm.tune.ray_results`); :mod:`g4mm.tune.ray_progress` prints one line per trial
   event meanwhile.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from g4mm.config import ConfigError, ExperimentConfig, load_config
from g4mm.pipeline.preprocess import run_preprocess
from g4mm.pipeline.ray_runtime import (
    _running_local_cluster,
    cluster_cpus,
    cluster_gpus,
    init_ray,
)
from g4mm.tune.outputs import summarize, write_outputs
from g4mm.tune.plan import SweepSpec, grid_space, new_spec
from g4mm.tune.ray_progress import SweepProgress
from g4mm.tune.ray_results import collect_records, saved_trials
from g4mm.tune.ray_trial import run_trial
from g4mm.tune.space import Param, SearchSpace, SpaceError, load_space
from g4mm.tune.tracking import finish_sweep_run, open_sweep_run

__all__ = ["EXPERIMENT", "connect_ray", "prepare_features", "run_sweep"]

#: Tune's experiment directory is ``<output>/ray/<EXPERIMENT>``.
EXPERIMENT = "search"
#: Config fields that change the preprocessed shards (so each value needs its own preprocess).
_PREP_FIELDS = ("model.lm", "model.vision", "model.text_encoder")


# ------------------------------------------------------------------------------- Ray, data


def connect_ray(num_cpus: int | None = None, dashboard_port: int | None = None) -> bool:
    """Join a running cluster (``RAY_ADDRESS`` or ``ray start`` on this machine), else start a
    local Ray with its dashboard on 127.0.0.1 (Train-in-Tune needs the dashboard).

    Returns:
        True when this call started a local Ray (its CPUs are all there will ever be).
    """
    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address == "local" or (not address and not _running_local_cluster()):
            port = dashboard_port or (8265 if _port_free(8265) else _free_port())
            # Train's placement-group cleaner finds the state API through this variable (the
            # workers inherit it); without it, another Ray on this machine makes its lookup
            # fail and a stopped trial's placement group is never removed
            os.environ.setdefault("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                dashboard_port=port,
            )
            started = True
    init_ray(num_cpus)  # joins when needed; configures Ray Data either way
    return started


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cap_concurrency(cfg: ExperimentConfig, spec: SweepSpec) -> None:
    """On a fixed local Ray, run only as many ``ray_train`` trials at once as leave a CPU's
    worth free: Ray Data feeds the Train workers and hangs without spare CPUs (RAY-NOTES)."""
    per_trial = cfg.train.num_workers * cfg.train.cpus_per_worker
    fits = max(1, int((cluster_cpus() - 1) // per_trial))
    if spec.runner == "ray_train" and fits < spec.max_concurrent:
        print(
            f"[sweep] {spec.max_concurrent} TorchTrainer trials at once would hold "
            f"{spec.max_concurrent * per_trial:g} of {cluster_cpus()} CPUs in workers, leaving "
            f"under 1 for Ray Data's read tasks: running {fits} at once"
        )
        spec.max_concurrent = fits


def _prep_choices(space: SearchSpace) -> list[Param]:
    """Space parameters that change the preprocessed shards (must be categorical)."""
    found = [p for p in space.params if p.target in _PREP_FIELDS or p.target.startswith("data.")]
    for p in found:
        if p.type != "categorical":
            raise SpaceError(
                f"parameter {p.name!r} sets {p.target}, which changes the "
                "preprocessed data: it must be categorical (one preprocess per "
                "choice, done before the trials)"
            )
    return found


def prepare_features(
    cfg: ExperimentConfig, space: SearchSpace, prep_root: str, num_cpus: int | None = None
) -> list[dict[str, Any]]:
    """Preprocess every combination of the space's data-changing choices, through the cache.

    Returns:
        One entry per combination: ``values``, ``cache_key``, ``cache_hit``, ``seconds``,
        ``output``.
    """
    params = _prep_choices(space)
    entries = []
    for combo in itertools.product(*(p.choices for p in params)):
        changes = {p.target: v for p, v in zip(params, combo, strict=True)}
        report = run_preprocess(cfg.updated(changes), prep_root, num_cpus=num_cpus)
        entries.append(
            {
                "values": {p.name: v for p, v in zip(params, combo, strict=True)},
                "cache_key": report["cache_key"],
                "cache_hit": bool(report["cache_hit"]),
                "seconds": report.get("hit_seconds", report.get("seconds")),
                "output": report["output"],
            }
        )
        state = "cache hit" if report["cache_hit"] else "computed"
        print(
            f"[sweep] preprocess {changes or '(base config)'}: {state} ({report['cache_key']})",
            flush=True,
        )
    return entries


# ----------------------------------------------------------------------------------- tuner


def _trainable(cfg: ExperimentConfig, space: SearchSpace, spec: SweepSpec, output: Path) -> Any:
    """``run_trial`` with the sweep's constants bound and the trial's resources attached."""
    threads = max(1, int(cfg.tune.cpus_per_trial))
    workers = cfg.train.num_workers
    gpus_per_worker = cfg.tune.gpus_per_trial / workers if cfg.tune.gpus_per_trial > 0 else 1.0
    fn = tune.with_parameters(
        run_trial,
        base=cfg.to_dict(),
        targets=space.targets,
        prep_root=spec.prep_root,
        output_dir=str(output),
        runner=spec.runner,
        threads=threads,
        gpus_per_worker=gpus_per_worker,
    )
    if spec.runner == "ray_train":
        # the Train workers hold the CPUs, not the trial: even 0.01 CPU here leaves Ray Data's
        # 1-CPU read tasks short on a 2-CPU box (workers 2 x 0.5 + 0.01 > 2 - 1)
        return tune.with_resources(fn, {"cpu": 0, "memory": 64 * 1024**2})
    resources = {"cpu": cfg.tune.cpus_per_trial}
    if cfg.tune.gpus_per_trial > 0:
        resources["gpu"] = cfg.tune.gpus_per_trial
    return tune.with_resources(fn, resources)


def _new_tuner(
    trainable, cfg: ExperimentConfig, space: SearchSpace, spec: SweepSpec, output: Path,
    tracking: Any = None,
) -> tune.Tuner:
    """``tracking``: the Tune callback that logs the trials to MLflow, or None."""
    total = spec.num_samples
    callbacks = [SweepProgress(spec.metric, total, space.names)]
    if tracking is not None:
        callbacks.append(tracking)
    run_config = tune.RunConfig(
        name=EXPERIMENT,
        storage_path=str(output / "ray"),
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=0),
        verbose=0,
    )
    reuse = spec.runner == "in_process"
    if spec.grid:
        return tune.Tuner(
            trainable,
            param_space={
                "variant": tune.grid_search(spec.variants),
                "seed": tune.grid_search(spec.seeds),
            },
            tune_config=tune.TuneConfig(
                num_samples=1, max_concurrent_trials=spec.max_concurrent, reuse_actors=reuse
            ),
            run_config=run_config,
        )
    searcher = OptunaSearch(
        space=space, metric=spec.metric, mode=spec.mode, seed=cfg.tune.seed,
        points_to_evaluate=space.first_points()[: spec.num_samples] or None,  # every backbone
    )  # fmt: skip
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        metric=spec.metric,
        mode=spec.mode,
        max_t=spec.max_t,
        grace_period=spec.grace_period,
        reduction_factor=spec.reduction_factor,
        stop_last_trials=False,  # the final (test) report comes after the last evaluation
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent,
            reuse_actors=reuse,
        ),
        run_config=run_config,
    )


# ------------------------------------------------------------------------------------ main


def _resolve_runner(cfg: ExperimentConfig) -> str:
    runner = cfg.tune.trial_runner
    if runner != "auto":
        return runner
    workers = cfg.train.num_workers
    return "ray_train" if workers > 1 and cluster_gpus() >= workers else "in_process"


def _load_sweep(output: Path) -> tuple[ExperimentConfig, SearchSpace, SweepSpec]:
    """The config, space and settings a sweep in ``output`` was started with (for resume)."""
    exp_dir = output / "ray" / EXPERIMENT
    if not (output / "sweep.json").is_file() or not tune.Tuner.can_restore(str(exp_dir)):
        raise FileNotFoundError(f"no sweep to resume in {output} (missing sweep.json or {exp_dir})")
    cfg = load_config(output / "config.yaml")
    space = load_space(str(output / "space.yaml"))
    return cfg, space, SweepSpec(**json.loads((output / "sweep.json").read_text()))


def _plan_sweep(
    cfg: ExperimentConfig,
    space: SearchSpace | None,
    output: Path,
    prep_root: str | None,
    grid_variants: Sequence[str] | None,
    seeds: Sequence[int] | None,
) -> tuple[ExperimentConfig, SearchSpace, SweepSpec]:
    """A new sweep's config (absolute paths), resolved space and settings."""
    if (output / "ray" / EXPERIMENT).exists():
        raise FileExistsError(
            f"{output} already holds a sweep: pass --resume to continue it, or choose another "
            "--output"
        )
    # trials run in other directories: every path they read must be absolute
    cfg = cfg.updated({"data.artifact_dir": str(Path(cfg.data.artifact_dir).resolve())})
    root = Path(prep_root).resolve() if prep_root else Path(cfg.data.artifact_dir) / "prep"
    spec = new_spec(cfg, str(root), grid_variants, seeds)
    if spec.grid:
        space = grid_space(spec.variants, spec.seeds)
    elif space is None:
        raise SpaceError("run_sweep needs a search space (or grid_variants)")
    return cfg, space.resolve(cfg), spec


def _announce(spec: SweepSpec, space: SearchSpace, resume: bool, output: Path) -> None:
    if spec.grid:
        what = f"grid: {len(spec.variants)} variants x seeds {spec.seeds}"
    else:
        what = (
            f"search: {spec.num_samples} trials, {spec.max_concurrent} at once, ASHA over "
            f"{spec.max_t} evaluations (grace {spec.grace_period}, factor {spec.reduction_factor})"
        )
    print(
        f"[sweep] {'resuming ' if resume else ''}{what}; runner {spec.runner}; "
        f"{spec.metric} ({spec.mode}); output {output}",
        flush=True,
    )
    for p in space.params:
        print(f"[sweep]   {p.describe()}", flush=True)


def _log_preprocess(output: Path, resume: bool, entries: list[dict[str, Any]]) -> None:
    """Append this invocation's preprocess calls to ``preprocess.json``."""
    path = output / "preprocess.json"
    runs = json.loads(path.read_text()) if path.is_file() else []
    runs.append({"resume": resume, "entries": entries})
    path.write_text(json.dumps(runs, indent=2) + "\n")


def run_sweep(
    cfg: ExperimentConfig | None,
    space: SearchSpace | None,
    output: str | os.PathLike[str],
    *,
    grid_variants: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    resume: bool = False,
    prep_root: str | None = None,
    num_cpus: int | None = None,
    dashboard_port: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) a sweep and write its outputs; returns the summary (``summary.json``).

    Args:
        cfg: the experiment config (its ``tune`` section drives the search); ignored with
            ``resume`` (the output directory's ``config.yaml`` is used).
        space: a space from :func:`g4mm.tune.space.load_space` (resolved here); ignored with
            ``resume`` or ``grid_variants``.
        output: the sweep's output directory.
        grid_variants: run these variants x ``seeds`` instead of searching.
        seeds: grid seeds (default: ``[cfg.train.seed]``).
        resume: continue the interrupted sweep in ``output`` (``Tuner.restore``).
        prep_root: preprocess cache root (default ``<artifact_dir>/prep``).
        num_cpus, dashboard_port: for a locally started Ray.

    Raises:
        ConfigError / SpaceError: bad config or space; FileExistsError: ``output`` already holds
        a sweep and ``resume`` is off; FileNotFoundError: nothing to resume.
    """
    start = time.perf_counter()
    output = Path(output).resolve()
    exp_dir = output / "ray" / EXPERIMENT
    if resume:
        cfg, space, spec = _load_sweep(output)
    elif cfg is None:
        raise ConfigError("run_sweep needs a config unless resuming")
    else:
        cfg, space, spec = _plan_sweep(cfg, space, output, prep_root, grid_variants, seeds)
    output.mkdir(parents=True, exist_ok=True)

    local = connect_ray(num_cpus, dashboard_port)
    if not resume:
        spec.runner = _resolve_runner(cfg)
        if local:
            _cap_concurrency(cfg, spec)
        cfg.save_yaml(output / "config.yaml")
        space.save_yaml(output / "space.yaml")
        (output / "sweep.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
    _announce(spec, space, resume, output)
    prep = prepare_features(cfg, space, spec.prep_root, num_cpus)
    _log_preprocess(output, resume, prep)

    trainable = _trainable(cfg, space, spec, output)
    parent, tracking = open_sweep_run(cfg, output, {
        "mode": "grid" if spec.grid else "search", "runner": spec.runner,
        "metric": spec.metric, "metric_mode": spec.mode, "num_samples": spec.num_samples,
        **{f"space.{p.name}": p.describe() for p in space.params},
    })  # fmt: skip
    if resume:  # Tune restores the callbacks it was started with (the MLflow one included)
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True)
    else:
        tuner = _new_tuner(trainable, cfg, space, spec, output, tracking)
    try:
        tuner.fit()
    except BaseException:
        if parent is not None:
            parent.finish("KILLED")
        raise

    trials = saved_trials(exp_dir)
    unfinished = [t for t in trials if t.status not in (Trial.TERMINATED, Trial.ERROR)]
    interrupted = bool(unfinished) or len(trials) < spec.num_samples
    records = collect_records(trials, space, spec.metric, interrupted)
    summary = {
        **summarize(cfg, spec, records, interrupted),
        "resumed": resume,
        "wall_s": round(time.perf_counter() - start, 1),
        "preprocess": prep,
        **write_outputs(output, cfg, space, spec, records),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if parent is not None:
        finish_sweep_run(parent, output, summary)
        summary["mlflow"] = parent.url_hint
    return summary
