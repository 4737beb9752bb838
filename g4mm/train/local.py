"""Train and evaluate in one plain process (no Ray): the GPU box path and the variant sweeps.

Same loop, components and checkpoints as the Ray Train job; only the data feeding differs
(shuffled epochs of the train rows instead of a Ray Data shard).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from g4mm.data.prepared import read_rows
from g4mm.train.checkpoint import save_checkpoint
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
) -> dict[str, Any]:
    """Train ``cfg`` on ``prep_dir``, keep the best validation checkpoint, test it.

    Writes the run directory (see :func:`g4mm.train.run_dir.write_run_outputs`) and
    ``checkpoints/best`` + ``checkpoints/last``; returns the final metrics.

    Args:
        on_eval: called with each evaluation's metrics after its checkpoints are saved (a Tune
            trial reports them here, so a scheduler can stop the run between evaluations).
    """
    start = time.perf_counter()
    device = pick_device(cfg.train.use_gpu)
    parts = build_components(cfg, prep_dir, device)
    train_rows = read_rows(prep_dir, "train")
    val_rows = limit(read_rows(prep_dir, "val"), cfg.eval.max_samples)
    batches = cycle_batches(
        train_rows, parts.collator, cfg.train.batch_size, cfg.train.seed, cfg.train.bucket_window
    )
    if cfg.train.bucket_window:
        log(bucketing_note(cfg.train.bucket_window, cfg.train.batch_size))
    key, best = score_key(cfg), {"score": None, "state": None}

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
        collate_counts=collate_counter(parts.collator),
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
    }
    return final
