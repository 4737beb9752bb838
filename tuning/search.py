"""Sweep Graph4MM with Ray Tune: Optuna (TPE) search + ASHA, or a grid over the ablation variants.

Usage: python tuning/search.py [--config NAME|PATH] [--num-samples N] [--max-concurrent M]
       [--space FILE] [--metric NAME] [--output DIR] [--resume] [--grid variants --seeds ...]

Each trial is one training run built by the same code as jobs/train.py (the in-process trainer
in the trial, or a TorchTrainer per trial: --runner), reporting every validation round so ASHA
can stop it early. All trials read the same cached preprocessing. The output directory gets
config.yaml (resolved), space.yaml, leaderboard.csv/.md, best.yaml (loads with
`jobs/train.py --config`), importances.json, ablation.md/.csv, metric_vs_alpha.png,
metric_vs_num_hops.png, metric_by_variant.png, summary.json and trials/<id>/ run directories.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from g4mm.config import (
    LOSS_METRICS,
    TRIAL_RUNNERS,
    VARIANTS,
    ConfigError,
    add_config_arguments,
    config_from_args,
)
from g4mm.console import add_verbose_argument, apply_verbosity

SPACES_DIR = Path(__file__).resolve().parent / "spaces"

OUTPUT_FILES = (
    "config.yaml",
    "space.yaml",
    "leaderboard.csv",
    "leaderboard.md",
    "best.yaml",
    "importances.json",
    "ablation.md",
    "ablation.csv",
    "metric_vs_alpha.png",
    "metric_vs_num_hops.png",
    "metric_by_variant.png",
    "summary.json",
)


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python tuning/search.py --config smoke --num-samples 4 --output runs/sweep\n"
            "  python tuning/search.py --output runs/sweep --resume\n"
            "  python tuning/search.py --config smoke --grid variants --seeds 0 1 2\n"
            "  python tuning/search.py --space my.yaml --metric loss --set train.max_steps=400"
        ),
    )
    add_config_arguments(parser)
    add_verbose_argument(parser)
    parser.add_argument(
        "--num-samples",
        type=int,
        metavar="N",
        help="trials of the search (default: tune.num_samples)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        metavar="M",
        help="trials run at once (default: tune.max_concurrent)",
    )
    parser.add_argument(
        "--space",
        metavar="NAME|FILE",
        help="search space: a name in tuning/spaces/ or a YAML path "
        "(default: tune.space, else 'default')",
    )
    parser.add_argument(
        "--metric",
        metavar="NAME",
        help="validation metric to optimise, one of eval.metrics or "
        f"{'/'.join(LOSS_METRICS)} (default: tune.metric)",
    )
    parser.add_argument(
        "--mode",
        choices=("max", "min"),
        help="maximise or minimise --metric (default: tune.mode; min for a "
        "loss given with --metric)",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="output directory (default: <train.output_dir>/sweep-<name>-<time>)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted sweep in --output (Tuner.restore); "
        "finished trials are kept, not rerun",
    )
    parser.add_argument(
        "--grid",
        choices=("variants",),
        help="instead of searching, run every variant with the same seeds "
        "(repeatable ablation table; no early stopping)",
    )
    parser.add_argument(
        "--variants",
        type=_csv_list,
        metavar="A,B,...",
        help=f"variants of --grid (default: all of {', '.join(VARIANTS)})",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        metavar="SEED",
        help="train.seed values of --grid, e.g. --seeds 0 1 2 (default: train.seed)",
    )
    parser.add_argument(
        "--runner",
        choices=TRIAL_RUNNERS,
        help="trial runner (default: tune.trial_runner): in_process = the "
        "in-process trainer inside the trial; ray_train = a TorchTrainer "
        "per trial; auto = ray_train only on a cluster with >= "
        "train.num_workers GPUs",
    )
    parser.add_argument(
        "--prep-root",
        metavar="DIR",
        help="preprocess cache root (default: <data.artifact_dir>/prep)",
    )
    parser.add_argument("--num-cpus", type=int, help="CPUs of a locally started Ray")
    parser.add_argument(
        "--dashboard-port",
        type=int,
        help="dashboard port of a locally started Ray (default: Ray's 8265)",
    )
    return parser


def _seeds(parser: argparse.ArgumentParser, values: list[str] | None) -> list[int] | None:
    if not values:
        return None
    try:
        return [int(s) for v in values for s in _csv_list(v)]
    except ValueError:
        parser.error(f"--seeds {' '.join(values)}: expected integers")
        raise  # pragma: no cover - parser.error exits


def _sweep_config(args: argparse.Namespace, parser: argparse.ArgumentParser):
    cfg = config_from_args(args, parser)
    changes: dict[str, object] = {}
    if args.num_samples is not None:
        changes["tune.num_samples"] = args.num_samples
    if args.max_concurrent is not None:
        changes["tune.max_concurrent"] = args.max_concurrent
    if args.space is not None:
        changes["tune.space"] = args.space
    if args.metric is not None:
        changes["tune.metric"] = args.metric
        if args.mode is None and args.metric.removeprefix("val_") in LOSS_METRICS:
            changes["tune.mode"] = "min"
    if args.mode is not None:
        changes["tune.mode"] = args.mode
    if args.runner is not None:
        changes["tune.trial_runner"] = args.runner
    try:
        return cfg.updated(changes)
    except ConfigError as exc:
        parser.error(str(exc))
        raise  # pragma: no cover - parser.error exits


def _explicit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    names = (
        "config",
        "overrides",
        "num_samples",
        "max_concurrent",
        "space",
        "metric",
        "mode",
        "grid",
        "variants",
        "seeds",
        "runner",
        "prep_root",
    )
    flags = {action.dest: action.option_strings[0] for action in parser._actions
             if action.option_strings}  # fmt: skip
    return [flags[n] for n in names if getattr(args, n) != parser.get_default(n)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_verbosity(args)
    from g4mm.tune.space import SpaceError, load_space

    if args.resume:
        if not args.output:
            parser.error("--resume needs --output DIR (the sweep to continue)")
        ignored = _explicit(args, parser)
        if ignored:
            print(
                f"[sweep] --resume reuses {args.output}/config.yaml, space.yaml and "
                f"sweep.json; ignoring {' '.join(ignored)}",
                flush=True,
            )
        cfg = space = None
        variants = seeds = None
        output = args.output
    else:
        cfg = _sweep_config(args, parser)
        variants = seeds = None
        space = None
        if args.grid == "variants":
            variants = args.variants or list(VARIANTS)
            unknown = [v for v in variants if v not in VARIANTS]
            if unknown:
                parser.error(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
            seeds = _seeds(parser, args.seeds)
        else:
            if args.variants or args.seeds:
                parser.error("--variants and --seeds go with --grid variants")
            try:
                space = load_space(cfg.tune.space, SPACES_DIR)
            except SpaceError as exc:
                parser.error(str(exc))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        output = args.output or str(Path(cfg.train.output_dir) / f"sweep-{cfg.name}-{stamp}")

    from g4mm.tune.ray_search import run_sweep

    try:
        summary = run_sweep(
            cfg,
            space,
            output,
            grid_variants=variants,
            seeds=seeds,
            resume=args.resume,
            prep_root=args.prep_root,
            num_cpus=args.num_cpus,
            dashboard_port=args.dashboard_port,
        )
    except (ConfigError, FileExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_summary(summary, Path(output).resolve())
    if summary["interrupted_run"]:
        print(
            f"[sweep] interrupted: resume with: python tuning/search.py --output {output} --resume",
            flush=True,
        )
        return 130
    return 0 if summary["completed"] + summary["stopped"] > 0 else 1


def _print_summary(summary: dict, output: Path) -> None:
    print(
        f"[sweep] done in {summary['wall_s']:.1f}s: {summary['trials']} trials, "
        f"{summary['completed']} completed, {summary['stopped_early']} stopped early by ASHA "
        f"({summary['stopped_before_max_steps']} before train.max_steps), "
        f"{summary['error']} failed",
        flush=True,
    )
    if summary.get("best_trial"):
        params = ", ".join(f"{k}={v}" for k, v in (summary["best_params"] or {}).items())
        print(
            f"[sweep] best trial {summary['best_trial']}: {summary['metric']} = "
            f"{summary['best_score']}; {params}"
        )
    note = summary["importances"].get("note")
    if note:
        print(f"[sweep] importances: {note}")
    files = [name for name in OUTPUT_FILES if (output / name).exists()]
    print(f"[sweep] wrote {output}: {', '.join(files)}", flush=True)
    if summary.get("mlflow"):
        print(f"[sweep] tracked in MLflow (a parent run, a child per trial): {summary['mlflow']}")


if __name__ == "__main__":
    sys.exit(main())
