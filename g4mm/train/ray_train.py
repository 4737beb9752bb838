"""Ray Train wiring: DDP over the adapter, Ray Data shards in, checkpoints and metrics out.

Driver: :func:`fit` builds a ``TorchTrainer`` (``ScalingConfig(num_workers, use_gpu)``, gloo on
CPU / NCCL on GPU), feeds the train split with ``datasets=`` (split across workers), and returns
the Ray ``Result``. Worker: :func:`train_loop_per_worker` builds the same components as the
in-process trainer, wraps ONLY the adapter in DDP (frozen modules are neither synchronised nor
trained), reads its shard with ``get_dataset_shard("train").iter_torch_batches`` (or, with
``train.bucket_window``, in length-bucketed chunks through ``iter_batches``), shuffled every
epoch (blocks in a new order, rows through a local shuffle buffer), resumes from
``ray.train.get_checkpoint()`` after a failure, and reports metrics + adapter checkpoints.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from g4mm.config import ExperimentConfig
from g4mm.console import verbose
from g4mm.data.prepared import read_rows, split_path
from g4mm.model.inputs import Graph4MMInputs
from g4mm.pipeline.dataset import load_split_dataset
from g4mm.tracking import TrackedRun
from g4mm.train.checkpoint import load_checkpoint, restore_adapter, save_checkpoint
from g4mm.train.components import (
    bucketed_chunk_batches,
    bucketing_note,
    build_components,
    collate_counter,
    make_evaluator,
)
from g4mm.train.grad_sync import broadcast_module
from g4mm.train.local import limit
from g4mm.train.loop import adapter_without_ddp, has_trainable_parameters, train_loop
from g4mm.train.resume import resumed_seed, save_ray_run
from g4mm.train.selection import is_score, ranking, score_key


class _NumpyCollate(NumpyBatchCollateFn):
    """Ray's collate protocol around the Ray-free :class:`GraphCollator`."""

    def __init__(self, collator) -> None:
        super().__init__()
        self.collator = collator

    def __call__(self, batch: dict) -> Graph4MMInputs:
        return self.collator(batch)


#: Rows in each worker's local shuffle buffer (Ray Data's ``local_shuffle_buffer_size``).
#: The preprocessing writes a page's samples side by side; with the blocks in a new order
#: every epoch (:func:`train_dataset`) the buffer mixes samples across pages and blocks.
SHUFFLE_BUFFER_ROWS = 2048


def train_dataset(prep_dir: str | Path, seed: int) -> ray.data.Dataset:
    """The train split with its blocks in a new, seeded order at every execution (epoch):
    ``randomize_block_order`` with ``RandomSeedConfig(seed)``, reseeded per execution."""
    order = ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True)
    dataset = load_split_dataset(prep_dir, "train")
    if _parquet_bytes(split_path(prep_dir, "train")) <= MATERIALIZE_TRAIN_BYTES:
        dataset = dataset.materialize()
    return dataset.randomize_block_order(seed=order)


#: A train split whose parquet files total at most this is read once into Ray's object store
#: (``Dataset.materialize``) instead of being read again at every epoch: the re-read stalled
#: each worker 2.2-2.8 s per epoch on the default run (every ~39 steps: the ETA jumped from
#: 0m39s to 1m40s at each epoch start, issue 20); held, every 10-step window ran at 80-108
#: samples/s (against 31-39 in each window holding an epoch start). Larger splits stream from
#: storage at every epoch.
MATERIALIZE_TRAIN_BYTES = 1 << 30


def _parquet_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).rglob("*.parquet"))


def epoch_batches(
    shard: ray.data.DataIterator, collator, batch_size: int, bucket_window: int, seed: int
) -> Iterator[Graph4MMInputs]:
    """One pass over ``shard``, rows shuffled through a :data:`SHUFFLE_BUFFER_ROWS` buffer
    seeded by ``seed`` (the caller gives every epoch and rank its own); with
    ``bucket_window`` > 0 read in chunks of ``bucket_window`` batches, each length-bucketed
    (``train.bucket_window``)."""
    shuffle = {"local_shuffle_buffer_size": SHUFFLE_BUFFER_ROWS, "local_shuffle_seed": seed}
    if bucket_window:
        chunks = shard.iter_batches(
            batch_size=bucket_window * batch_size, batch_format="numpy", **shuffle
        )
        return bucketed_chunk_batches(chunks, collator, batch_size, seed, bucket_window)
    return shard.iter_torch_batches(
        batch_size=batch_size, collate_fn=_NumpyCollate(collator), drop_last=True, **shuffle
    )


def _shard_batches(
    collator, batch_size: int, bucket_window: int = 0, seed: int = 0
) -> Iterator[Graph4MMInputs]:
    """Endless epochs over this worker's shard of the train split (:func:`epoch_batches`,
    seeded ``seed + 10_000 * epoch``)."""
    shard = ray.train.get_dataset_shard("train")
    for epoch in itertools.count():
        produced = 0
        for batch in epoch_batches(
            shard, collator, batch_size, bucket_window, seed + 10_000 * epoch
        ):
            produced += 1
            yield batch
        if produced == 0:
            raise RuntimeError(f"this worker's train shard holds no full batch of {batch_size}")


def _wait_until_reports_collected(num_reports: int, timeout_s: float = 120.0) -> None:
    """Block until the Train controller has collected this worker's ``num_reports`` reports.

    A checkpoint is committed only once every rank's report of that round reached the
    controller; ``ray.train.report`` returns before that (the report sits in the worker's
    result queue until the next health-check poll), so a worker that dies right after reporting
    loses the round and the restart finds no checkpoint. Uses Ray Train V2 internals; falls
    back to a fixed wait of a few poll intervals.
    """
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        train_context = get_train_context()
        results = train_context.get_result_queue()
    except Exception:  # pragma: no cover - internals moved
        time.sleep(10.0)
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if train_context.current_report_index >= num_reports and results.unfinished_tasks == 0:
            break
        time.sleep(0.1)
    time.sleep(3.0)  # let the poll reply (carrying the report) reach the controller


def _quiet_report_lines() -> None:
    """Ray Train 2.60 logs "Reporting training result N: TrainingReport(...)" (every rank,
    every evaluation, the whole metrics dict) through ``logging.getLogger(__file__)``: a
    logger named by its file path, which ``RunConfig.logging_config`` (filtering ``ray.train.*``)
    does not reach. That one logger goes to WARNING here; its file logs are unaffected by
    anything else."""
    import logging

    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # pragma: no cover - internals moved
        return
    logger = logging.getLogger(train_context.__file__)
    logger.setLevel(logging.WARNING)
    logger.addFilter(lambda record: record.levelno >= logging.WARNING)  # kept if a level resets


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. ``config``: cfg (dict), prep_dir, fail_at_step (tests)."""
    cfg = ExperimentConfig.from_dict(config["cfg"])
    prep_dir = config["prep_dir"]
    if not verbose():
        _quiet_report_lines()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    parts = build_components(cfg, prep_dir, device)
    model = parts.model

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(directory)
        restore_adapter(model, resume, cfg.model, source="resumed checkpoint")
    # a restarted worker continues on fresh seeded streams (dropout, data order), not the
    # start's: the same seeds again would replay step 0's dropout masks and epoch 0's order
    restart = 0 if resume is None else int(resume["step"])
    if restart:
        torch.manual_seed(resumed_seed(cfg.train.seed, restart, rank))
    # DDP over the trainable part only (prepare_model also moves it to this worker's device);
    # the diffusion weights are a constant buffer: nothing to broadcast. With train.step_graph
    # no DDP at all (its reducer breaks CUDA-graph capture): the loop averages gradients
    # itself and the ranks start from rank 0's weights (g4mm.train.grad_sync)
    if not has_trainable_parameters(model):  # nothing to synchronise (text_only, raw)
        model.adapter.to(device)
    elif cfg.train.step_graph:
        model.adapter = ray.train.torch.prepare_model(model.adapter, parallel_strategy=None)
        broadcast_module(model.adapter)
    else:
        model.adapter = ray.train.torch.prepare_model(
            model.adapter, parallel_strategy_kwargs=no_forward_buffer_sync()
        )
    no_sync = getattr(model.adapter, "no_sync", None)

    evaluate = None
    if rank == 0:
        val_rows = limit(read_rows(prep_dir, "val"), cfg.eval.max_samples)
        evaluate_val = make_evaluator(parts, cfg, val_rows)

        def evaluate() -> dict[str, float]:
            # rank 0 alone evaluates: run the bare adapter so no DDP collective can block
            with adapter_without_ddp(model, True):
                return evaluate_val()

    tracked = TrackedRun(**config["tracking"]) if config.get("tracking") and rank == 0 else None

    def report(metrics: dict, state: dict | None) -> None:
        if state is None:
            ray.train.report(metrics)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, state)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        if tracked is not None:  # the curve in MLflow as it happens (after the checkpoint)
            tracked.log_evaluation(metrics)

    fail_at = config.get("fail_at_step")

    def inject_failure(step: int) -> None:
        # test hook: the first attempt's rank-1 worker is SIGKILLed right after its first report
        if (
            fail_at is not None
            and resume is None
            and step >= fail_at
            and rank == min(1, context.get_world_size() - 1)
        ):
            _wait_until_reports_collected(step // cfg.train.eval_every)
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a lost node would

    if cfg.train.bucket_window and rank == 0:
        print(bucketing_note(cfg.train.bucket_window, cfg.train.batch_size), flush=True)
    train_loop(
        model=model,
        batches=_shard_batches(
            parts.collator,
            cfg.train.batch_size,
            cfg.train.bucket_window,
            resumed_seed(cfg.train.seed, restart, rank),
        ),
        cfg=cfg,
        device=device,
        report=report,
        evaluate=evaluate,
        resume=resume,
        is_main=rank == 0,
        no_sync=no_sync,
        on_report=inject_failure,
        collate_counts=collate_counter(parts.collator, device),
    )


def no_forward_buffer_sync() -> dict[str, bool]:
    """DDP's keyword for "no buffer broadcast before each forward": ``forward_sync_buffers``
    from torch 2.13 on (which deprecates ``broadcast_buffers`` with a FutureWarning per
    worker), ``broadcast_buffers`` before it (torch 2.11 on the GPU machines)."""
    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def fit(
    cfg: ExperimentConfig,
    prep_dir: str,
    run_dir: Path,
    *,
    fail_at_step: int | None = None,
    callbacks: list | None = None,
    gpus_per_worker: float = 1.0,
    run_name: str | None = None,
    tracked: TrackedRun | None = None,
) -> ray.train.Result:
    """Run the TorchTrainer; checkpoints and Ray's run state go under ``train.storage_path``
    (any pyarrow filesystem URI, e.g. ``s3://bucket/runs``) or ``run_dir/ray``.

    Args:
        callbacks: Ray Train callbacks (a Tune trial passes ``TuneReportCallback()``).
        gpus_per_worker: GPUs per worker when GPUs are used (fractions share a GPU).
        run_name: the Ray run to continue (``ray_run.json`` of a stopped run: Ray Train
            restores it from its latest checkpoint in the same storage); None starts a new one
            and records it there (:mod:`g4mm.train.resume`).
        tracked: the MLflow run rank 0 logs every evaluation into (:mod:`g4mm.tracking`).
    """
    use_gpu = cfg.train.use_gpu == "true" or (
        cfg.train.use_gpu == "auto" and ray.cluster_resources().get("GPU", 0) > 0
    )
    resources = {"CPU": cfg.train.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus_per_worker
    storage = cfg.train.storage_path or str(run_dir / "ray")
    if run_name is None:  # unique: a new run never resumes another by accident
        run_name = f"{run_dir.name}-{uuid.uuid4().hex[:6]}"
        save_ray_run(run_dir, run_name, storage)
    # Ray Train V2 patches print() in its workers to log through the root logger, and tees to
    # stdout as well because Ray has already redirected a worker's stdout: every line of the
    # training loop reached the console twice. The driver passes this on to every worker.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "prep_dir": str(prep_dir),
            "fail_at_step": fail_at_step,
            "tracking": None if tracked is None else dataclasses.asdict(tracked),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            callbacks=callbacks,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            # Ray Train's INFO lines (worker-group set-up, "Reporting training result N:
            # TrainingReport(...)" per rank per evaluation) go to its log files, not the
            # console, unless -v / G4MM_LOG=debug
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.num_to_keep,
                checkpoint_score_attribute=score_key(cfg),
                checkpoint_score_order=cfg.tune.mode,
            ),
        ),
        datasets={"train": train_dataset(prep_dir, cfg.train.seed)},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    return trainer.fit()


def best_and_last_state(result: ray.train.Result, cfg: ExperimentConfig) -> tuple[dict, dict]:
    """The best checkpoint by the validation score (ties: the later) and the latest one."""
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint (error: {result.error})")
    with result.checkpoint.as_directory() as directory:
        last = load_checkpoint(directory)
    key = score_key(cfg)
    candidates = [(c, m) for c, m in (result.best_checkpoints or []) if is_score(m.get(key))]
    if not candidates:
        return last, last
    best_ckpt, _ = max(candidates, key=lambda cm: ranking(cm[1][key], cm[1]["step"], cfg.tune.mode))
    with best_ckpt.as_directory() as directory:
        return load_checkpoint(directory), last
