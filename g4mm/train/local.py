"""Train and evaluate in one plain process (no Ray): the GPU box path and the variant sweeps.

Same loop, components and checkpoints as the Ray Train job; only the data feeding differs
(shuffled epochs of the train rows instead of a Ray Data shard).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from g4mm.data.prepared import read_rows
from g4mm.train.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    restore_adapter,
    save_checkpoint,
)
from g4mm.train.components import (
    bucketing_note,
    build_components,
    collate_counter,
    cycle_batches,
    evaluate_checkpoint,
    make_evaluator,
    pick_device,
)
from g4mm.train.loop import train_loop
from g4mm.train.resume import resumed_seed
from g4mm.train.run_dir import write_run_outputs
from g4mm.train.selection import is_better, score_key


def limit(rows: list[dict], max_samples: int | None) -> list[dict]:
    return rows if max_samples is None else rows[:max_samples]


def train_in_process(
    cfg: Any,
    prep_dir: str,
    run_dir: Path,
    log=print,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` on ``prep_dir``, keep the best validation checkpoint, test it.

    Writes the run directory (see :func:`g4mm.train.run_dir.write_run_outputs`) and
    ``checkpoints/best`` + ``checkpoints/last``; returns the final metrics.

    Args:
        on_eval: called with each evaluation's metrics after its checkpoints are saved (a Tune
            trial reports them here, so a scheduler can stop the run between evaluations).
        resume: continue from ``run_dir/checkpoints/last`` when it exists (optimizer,
            scheduler, step and history with it; the best so far from ``checkpoints/best``);
            the data order continues on a fresh seeded stream, never replaying the start's.
    """
    start = time.perf_counter()
    device = pick_device(cfg.train.use_gpu)
    parts = build_components(cfg, prep_dir, device)
    key, best = score_key(cfg), {"score": None, "state": None}
    state = None
    if resume and (run_dir / "checkpoints" / "last" / CHECKPOINT_FILE).is_file():
        state = load_checkpoint(run_dir / "checkpoints" / "last")
        restore_adapter(parts.model, state, cfg.model, source=f"{run_dir}/checkpoints/last")
        best_path = run_dir / "checkpoints" / "best"
        has_best = (best_path / CHECKPOINT_FILE).is_file()
        best_state = load_checkpoint(best_path) if has_best else state
        best_metrics = next(
            (h for h in state["history"] if h["step"] == best_state["step"]), {}
        )  # fmt: skip
        best.update(score=best_metrics.get(key), state=best_state)
    elif resume:
        log(f"no checkpoint in {run_dir}/checkpoints/last yet: starting from step 0")
    restart = 0 if state is None else int(state["step"])
    if restart:
        torch.manual_seed(resumed_seed(cfg.train.seed, restart, 0))
    train_rows = read_rows(prep_dir, "train")
    val_rows = limit(read_rows(prep_dir, "val"), cfg.eval.max_samples)
    batches = cycle_batches(
        train_rows, parts.collator, cfg.train.batch_size,
        resumed_seed(cfg.train.seed, restart, 0), cfg.train.bucket_window,
    )  # fmt: skip
    if cfg.train.bucket_window:
        log(bucketing_note(cfg.train.bucket_window, cfg.train.batch_size))

    def report(metrics: dict, state: dict | None) -> None:
        if state is None:
            return
        save_checkpoint(run_dir / "checkpoints" / "last", state)
        if is_better(metrics.get(key), best["score"], cfg.tune.mode) or best["state"] is None:
            best.update(score=metrics.get(key), state=state)
            save_checkpoint(run_dir / "checkpoints" / "best", state)
        if on_eval is not None:
            on_eval(metrics)

    history = train_loop(
        model=parts.model, batches=batches, cfg=cfg, device=device, report=report,
        evaluate=make_evaluator(parts, cfg, val_rows), log=log,
        collate_counts=collate_counter(parts.collator), resume=state,
    )  # fmt: skip
    train_seconds = time.perf_counter() - start
    test_metrics, predictions = evaluate_checkpoint(cfg, prep_dir, best["state"], "test", device)
    final = finalize_metrics(history, best, key, test_metrics, train_seconds, len(train_rows))
    write_run_outputs(run_dir, cfg, history, final, predictions)
    return final


def finalize_metrics(history, best, key, test_metrics, seconds, num_train_rows) -> dict:
    """The metrics.json content: best val metrics, test metrics, loss and throughput."""
    best_step = best["state"]["step"] if best["state"] else None
    best_val = next((h for h in history if h["step"] == best_step), history[-1])
    final = {
        "best_step": best_step,
        "selected_by": key,
        **{k: v for k, v in best_val.items() if k.startswith("val_")},
        **{f"test_{k}": v for k, v in test_metrics.items()},
        **test_metrics,
        "train_loss": history[-1]["train_loss"],
        "samples_per_s": sum(h["samples_per_s"] for h in history) / len(history),
        "wall_s": seconds,
        "train_rows": num_train_rows,
        "resumed_from_step": max(h.get("resumed_from_step", 0) for h in history),
    }
    return final
