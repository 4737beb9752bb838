"""Train and evaluate Graph4MM: preprocess (cached) -> Ray Train DDP -> test the best checkpoint.

Usage: python jobs/train.py [--config NAME|PATH] [--set section.key=value ...] [--output DIR]
       python jobs/train.py --resume RUN_DIR [--set eval.../train.max_steps=...]

Joins the running Ray cluster when there is one (RAY_ADDRESS, or inside `ray job submit`),
else starts a local one. The run directory gets config.yaml, metrics.json, predictions.jsonl,
history.jsonl, loss.png, metrics.png and checkpoints/best (adapter only).
Ctrl-C or SIGTERM stops cleanly and prints the command that resumes the run from its last
checkpoint; a killed driver (SIGKILL, a lost node) resumes the same way.
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
    parser.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue the stopped run in RUN_DIR from its last checkpoint, with its own "
        "config (--set may change only the evaluation, the budget and the resources)",
    )  # fmt: skip
    parser.add_argument("--fail-at-step", type=int, help=argparse.SUPPRESS)  # fault-injection test
    return parser


def _config_and_run_dir(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """(config, run directory, in-process?) for a new run or for ``--resume``."""
    from g4mm.config import ConfigError
    from g4mm.train.checkpoint import CHECKPOINT_FILE
    from g4mm.train.resume import load_ray_run, resume_config
    from g4mm.train.run_dir import new_run_dir

    if not args.resume:
        cfg = config_from_args(args, parser)
        return cfg, None, args.in_process
    if args.output or args.config != parser.get_default("config"):
        parser.error("--resume continues a run in its own directory with its own config: "
                     "no --output or --config with it")  # fmt: skip
    try:
        cfg = resume_config(args.resume, args.overrides or ())
        ray_run = load_ray_run(Path(args.resume))
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    run_dir = new_run_dir(cfg, args.resume)
    if ray_run is not None and args.in_process:
        parser.error(f"{run_dir} is a Ray Train run: resume it without --in-process (its "
                     "checkpoints are Ray Train's)")  # fmt: skip
    last = run_dir / "checkpoints" / "last" / CHECKPOINT_FILE
    ran_in_process = ray_run is None and last.is_file()
    return cfg, (ray_run or {}).get("name"), args.in_process or ran_in_process


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_verbosity(args)
    cfg, ray_run_name, in_process = _config_and_run_dir(args, parser)

    from g4mm.tracking import open_tracked_run
    from g4mm.train.resume import last_checkpoint_step, resume_command, stop_on_sigterm
    from g4mm.train.run_dir import new_run_dir, resolve_storage_path

    start = time.perf_counter()
    # workers run in other directories: every path they read must be absolute
    cfg.data.artifact_dir = str(Path(cfg.data.artifact_dir).resolve())
    if cfg.train.storage_path:  # s3://..., file:///..., or a shared path: checkpoints + results
        cfg.train.storage_path = resolve_storage_path(cfg.train.storage_path)
    run_dir = new_run_dir(cfg, args.resume or args.output)
    print(f"{'resuming' if args.resume else 'run directory:'} {run_dir}")
    cfg.save_yaml(run_dir / "config.yaml")
    tracked = open_tracked_run(cfg, run_dir)
    status = "FAILED"
    try:
        with stop_on_sigterm():
            code = _run(args, cfg, run_dir, ray_run_name, in_process, start, tracked)
        status = "FINISHED" if code == 0 else "FAILED"
        return code
    except KeyboardInterrupt:
        status = "KILLED"
        step = last_checkpoint_step(run_dir, cfg)
        kept = "no checkpoint yet" if step is None else f"the last checkpoint (step {step}) is kept"
        print(f"\nstopped: {kept}; continue with: {resume_command(run_dir, in_process)}",
              file=sys.stderr)  # fmt: skip
        return 130
    finally:
        if tracked is not None:
            tracked.finish(status)


def _run(args, cfg, run_dir: Path, ray_run_name: str | None, in_process: bool, start: float,
         tracked) -> int:  # fmt: skip
    """Preprocess (cached), train (Ray Train or in-process), test, write the run directory;
    ``tracked``: the run's MLflow run (None: not tracked)."""
    import ray

    from g4mm.pipeline.input_errors import INPUT_ERRORS, input_error_message
    from g4mm.pipeline.preprocess import run_preprocess
    from g4mm.pipeline.ray_runtime import init_ray
    from g4mm.tracking import log_run_end
    from g4mm.train.checkpoint import save_checkpoint
    from g4mm.train.components import ClassesError, evaluation_classes
    from g4mm.train.local import finalize_metrics, train_in_process
    from g4mm.train.ray_train import best_and_last_state, fit
    from g4mm.train.run_dir import copy_run_dir, run_summary, write_json, write_run_outputs
    from g4mm.train.selection import score_key

    init_ray(args.num_cpus)
    if tracked is not None and tracked.uri.startswith("sqlite:") and _nodes() > 1:
        print("warning: runs are tracked in a SQLite file, but this cluster has several nodes: "
              "rank 0 may run on another one and write a copy of its own there. Run an MLflow "
              "server and --set train.tracking_uri=http://HEAD:5000 (docs/training.md)",
              file=sys.stderr)  # fmt: skip
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

    if in_process:
        final = train_in_process(cfg, prep_dir, run_dir, resume=bool(args.resume),
                                 on_eval=tracked and tracked.log_evaluation)  # fmt: skip
    else:
        try:
            result = fit(cfg, prep_dir, run_dir, fail_at_step=args.fail_at_step,
                         run_name=ray_run_name, tracked=tracked)  # fmt: skip
        except SystemExit as stop:  # Ray Train's own Ctrl-C handler aborts the run, then exits
            raise KeyboardInterrupt("stopped during Ray Train") from stop
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
        write_run_outputs(run_dir, cfg, history, final, predictions)
    final["preprocess_s"] = prep["seconds"]
    final["total_wall_s"] = time.perf_counter() - start
    write_json(run_dir / "metrics.json", final)
    print(run_summary(final, [*cfg.eval.keys, "loss"], run_dir))
    if tracked is not None:
        log_run_end(tracked, final, run_dir)
        print(f"tracked in MLflow: {tracked.url_hint}")
    if cfg.train.storage_path:
        print(f"run directory copied to {copy_run_dir(run_dir, cfg.train.storage_path)}")
    return 0


def _nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def _evaluate_remote(cfg, prep_dir, state):
    """Test evaluation as a Ray task (gets a GPU on a GPU cluster)."""
    from g4mm.train.components import evaluate_checkpoint, pick_device

    return evaluate_checkpoint(cfg, prep_dir, state, "test", pick_device(cfg.train.use_gpu))


if __name__ == "__main__":
    sys.exit(main())
