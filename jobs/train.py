"""Train and evaluate Graph4MM: preprocess (cached) -> Ray Train DDP -> test the best checkpoint.

Usage: python jobs/train.py [--config NAME|PATH] [--set section.key=value ...] [--output DIR]

Joins the running Ray cluster when there is one (RAY_ADDRESS, or inside `ray job submit`),
else starts a local one. The run directory gets config.yaml, metrics.json, predictions.jsonl,
history.jsonl, loss.png, metrics.png and checkpoints/best (adapter only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from g4mm.config import add_config_arguments, config_from_args
from g4mm.console import add_verbose_argument, apply_verbosity


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python jobs/train.py --config smoke --set model.variant=hop_aware",
    )
    add_config_arguments(parser)
    add_verbose_argument(parser)
    parser.add_argument("--output", help="run directory (default: <train.output_dir>/<name>-...)")
    parser.add_argument("--prep-root", help="preprocess cache root (default: <artifact_dir>/prep)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a locally started Ray")
    parser.add_argument(
        "--in-process", action="store_true",
        help="train in this process without Ray Train (still preprocesses with Ray Data)",
    )  # fmt: skip
    parser.add_argument("--fail-at-step", type=int, help=argparse.SUPPRESS)  # fault-injection test
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_verbosity(args)
    cfg = config_from_args(args, parser)

    import ray

    from g4mm.pipeline.input_errors import INPUT_ERRORS, input_error_message
    from g4mm.pipeline.preprocess import run_preprocess
    from g4mm.pipeline.ray_runtime import init_ray
    from g4mm.train.checkpoint import save_checkpoint
    from g4mm.train.components import ClassesError, evaluation_classes
    from g4mm.train.local import finalize_metrics, train_in_process
    from g4mm.train.ray_train import best_and_last_state, fit
    from g4mm.train.run_dir import (
        copy_run_dir,
        new_run_dir,
        resolve_storage_path,
        run_summary,
        write_json,
        write_run_outputs,
    )
    from g4mm.train.selection import score_key

    start = time.perf_counter()
    # workers run in other directories: every path they read must be absolute
    cfg.data.artifact_dir = str(Path(cfg.data.artifact_dir).resolve())
    if cfg.train.storage_path:  # s3://..., file:///..., or a shared path: checkpoints + results
        cfg.train.storage_path = resolve_storage_path(cfg.train.storage_path)
    run_dir = new_run_dir(cfg, args.output)
    print(f"run directory: {run_dir}")
    cfg.save_yaml(run_dir / "config.yaml")
    init_ray(args.num_cpus)
    prep_root = args.prep_root or str(Path(cfg.data.artifact_dir) / "prep")
    try:
        prep = run_preprocess(cfg, prep_root, num_cpus=args.num_cpus)
    except INPUT_ERRORS as exc:  # the data: one line naming the file, not a traceback
        print(f"error: {input_error_message(exc)}", file=sys.stderr)
        return 1
    prep_dir = prep["output"]
    try:
        evaluation_classes(cfg, prep_dir)  # a zero-shot metric without held-out classes: now
    except ClassesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.in_process:
        final = train_in_process(cfg, prep_dir, run_dir)
    else:
        result = fit(cfg, prep_dir, run_dir, fail_at_step=args.fail_at_step)
        if result.error is not None:
            print(f"training failed: {result.error}", file=sys.stderr)
            return 1
        best, last = best_and_last_state(result, cfg)
        save_checkpoint(run_dir / "checkpoints" / "best", best)
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0 and cfg.train.use_gpu != "false"
        test = ray.remote(num_gpus=1 if use_gpu else 0)(_evaluate_remote)
        test_metrics, predictions = ray.get(test.remote(cfg, prep_dir, best))
        history = last["history"]
        final = finalize_metrics(
            history, {"state": best}, score_key(cfg), test_metrics,
            time.perf_counter() - start, prep["samples"].get("train", 0),
        )  # fmt: skip
        final["resumed_from_step"] = max(h.get("resumed_from_step", 0) for h in history)
        write_run_outputs(run_dir, cfg, history, final, predictions)
    final["preprocess_s"] = prep["seconds"]
    final["total_wall_s"] = time.perf_counter() - start
    write_json(run_dir / "metrics.json", final)
    print(run_summary(final, [*cfg.eval.keys, "loss"], run_dir))
    if cfg.train.storage_path:
        print(f"run directory copied to {copy_run_dir(run_dir, cfg.train.storage_path)}")
    return 0


def _evaluate_remote(cfg, prep_dir, state):
    """Test evaluation as a Ray task (gets a GPU on a GPU cluster)."""
    from g4mm.train.components import evaluate_checkpoint, pick_device

    return evaluate_checkpoint(cfg, prep_dir, state, "test", pick_device(cfg.train.use_gpu))


if __name__ == "__main__":
    sys.exit(main())
