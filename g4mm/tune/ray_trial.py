"""What one Tune trial runs (Ray module): the same training code as ``jobs/train.py``.

:func:`run_trial` is the function trainable. It builds the trial's config from the sampled
parameters (:func:`g4mm.tune.space.trial_config`), finds the preprocessed shards the driver
prepared (by their content-hash cache key; a trial never preprocesses), and trains with

- ``in_process``: :func:`g4mm.train.local.train_in_process` in the trial's own process,
  reporting every evaluation with ``tune.report`` so ASHA can stop it between evaluations;
- ``ray_train``: a ``TorchTrainer`` per trial (:func:`g4mm.train.ray_train.fit`) whose
  evaluations reach Tune through ``TuneReportCallback``; the trial itself holds almost no
  resources (``tune.with_resources({"cpu": 0, "memory": 64 MiB})``), its Train workers hold
  the rest.

Either way a completed trial tests its best checkpoint and sends one last report with
``phase = "test"``: the best validation metrics, the ``test_*`` metrics and timings. Its run
directory ``<output>/trials/<trial_id>/`` is a ``jobs/train.py`` run directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import tune

from g4mm.config import ExperimentConfig
from g4mm.pipeline.cache import cache_key, is_done
from g4mm.train.selection import score_key
from g4mm.tune.space import trial_config

__all__ = ["TEST_PHASE", "VAL_PHASE", "prep_dir_for", "run_trial"]

VAL_PHASE, TEST_PHASE = "val", "test"


def prep_dir_for(cfg: ExperimentConfig, prep_root: str) -> tuple[Path, str]:
    """The committed preprocess directory of ``cfg`` under ``prep_root`` and its cache key.

    Raises:
        RuntimeError: the driver did not preprocess this config (trials never recompute).
    """
    key = cache_key(cfg)
    if key is None or not is_done(Path(prep_root) / key):
        raise RuntimeError(
            f"no preprocessed data for this trial's config under {prep_root} (key {key}); the "
            "sweep driver preprocesses every backbone/data choice before the trials start"
        )
    return Path(prep_root) / key, key


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr to ``path`` (at the file-descriptor level, so the
    evaluation's Java tokenizer subprocess too); the sweep's console keeps its progress lines."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with path.open("ab") as fh:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _train_in_process(
    cfg: ExperimentConfig, prep_dir: Path, run_dir: Path, threads: int
) -> dict[str, Any]:
    import torch
    import transformers

    from g4mm.train.local import train_in_process

    torch.set_num_threads(max(1, threads))
    transformers.utils.logging.disable_progress_bar()
    key = score_key(cfg)

    def on_eval(metrics: dict[str, Any]) -> None:
        report = _numbers(metrics)
        report.setdefault(key, math.nan)  # the searcher needs the key in every report
        tune.report({**report, "phase": VAL_PHASE})

    return train_in_process(cfg, str(prep_dir), run_dir, log=_log, on_eval=on_eval)


def _log(line: str) -> None:
    print(line, flush=True)


def _evaluate(
    cfg: ExperimentConfig, prep_dir: str, state: dict
) -> tuple[dict[str, float], list[dict]]:
    """Test metrics and predictions of a checkpoint (a Ray task: a GPU when there is one)."""
    from g4mm.train.components import evaluate_checkpoint, pick_device

    return evaluate_checkpoint(cfg, prep_dir, state, "test", pick_device(cfg.train.use_gpu))


def _train_with_ray_train(
    cfg: ExperimentConfig, prep_dir: Path, run_dir: Path, gpus_per_worker: float
) -> dict[str, Any]:
    from ray.tune.integration.ray_train import TuneReportCallback

    from g4mm.train.checkpoint import save_checkpoint
    from g4mm.train.local import finalize_metrics
    from g4mm.train.ray_train import best_and_last_state, fit
    from g4mm.train.run_dir import write_run_outputs

    start = time.perf_counter()
    result = fit(
        cfg,
        str(prep_dir),
        run_dir,
        callbacks=[TuneReportCallback()],
        gpus_per_worker=gpus_per_worker,
    )
    if result.error is not None:
        raise RuntimeError(f"the trial's Ray Train run failed: {result.error}")
    best, last = best_and_last_state(result, cfg)
    save_checkpoint(run_dir / "checkpoints" / "best", best)
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0 and cfg.train.use_gpu != "false"
    test = ray.remote(_evaluate).options(
        num_cpus=cfg.train.cpus_per_worker,
        num_gpus=gpus_per_worker if use_gpu else 0,
        scheduling_strategy="DEFAULT",  # outside the trial's placement group (memory only)
    )
    test_metrics, predictions = ray.get(test.remote(cfg, str(prep_dir), best))
    history = last["history"]
    train_rows = json.loads((prep_dir / "report.json").read_text())["samples"].get("train", 0)
    final = finalize_metrics(
        history,
        {"state": best},
        score_key(cfg),
        test_metrics,
        time.perf_counter() - start,
        train_rows,
    )
    write_run_outputs(run_dir, cfg, history, final, predictions)
    return final


def run_trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    targets: dict[str, str],
    prep_root: str,
    output_dir: str,
    runner: str = "in_process",
    threads: int = 1,
    gpus_per_worker: float = 1.0,
) -> None:
    """One trial: train the sampled config, report each evaluation, then the test metrics.

    Args:
        config: the sampled parameters (Tune's trial config), e.g. ``{"variant": ..., ...}``.
        base: the sweep's experiment config as a dict (constant across trials).
        targets: parameter name -> config field.
        prep_root: the preprocess cache root the driver filled.
        output_dir: the sweep's output directory (run directories go to ``trials/<id>``).
        runner: ``"in_process"`` or ``"ray_train"``.
        threads: torch threads of the in-process trainer (the trial's CPUs).
        gpus_per_worker: GPU share of each Train worker (``ray_train``).
    """
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(base, config, targets)
    prep_dir, key = prep_dir_for(cfg, prep_root)
    run_dir = Path(output_dir) / "trials" / trial_id
    shutil.rmtree(run_dir, ignore_errors=True)  # a restarted trial starts clean
    run_dir.mkdir(parents=True)
    cfg.save_yaml(run_dir / "config.yaml")
    start = time.perf_counter()
    with output_to(run_dir / "train.log"):
        if runner == "ray_train":
            final = _train_with_ray_train(cfg, prep_dir, run_dir, gpus_per_worker)
        else:
            final = _train_in_process(cfg, prep_dir, run_dir, threads)
    report = _numbers(final)
    report.setdefault(score_key(cfg), math.nan)
    report.update(step=float(cfg.train.max_steps), train_s=time.perf_counter() - start)
    tune.report({**report, "phase": TEST_PHASE, "prep_key": key, "run_dir": str(run_dir)})
