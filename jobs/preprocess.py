"""Preprocess a dataset into cached sample + feature shards with Ray Data.

Usage: python jobs/preprocess.py --dataset {synthetic-docs,synthetic-products,wikiweb2m,mmgraph,
parquet} [--input DIR] [--images DIR] --output DIR [--config NAME|PATH] [--set k=v ...]
[--num-cpus N]

Prints one line per stage, then the report (JSON). Rerunning with the same inputs and config is
a cache hit. Joins RAY_ADDRESS / a running `ray start` cluster when there is one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from g4mm.config import DATASETS, add_config_arguments, config_from_args
from g4mm.console import add_verbose_argument, apply_verbosity
from g4mm.pipeline.input_errors import INPUT_ERRORS, check_input_dir, input_error_message

_NEEDS_INPUT = ("wikiweb2m", "mmgraph", "parquet")
_NEEDS_DIR = ("mmgraph", "parquet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python jobs/preprocess.py --dataset synthetic-docs --output prep",
    )
    parser.add_argument("--dataset", choices=DATASETS, help="source (default: data.dataset)")
    parser.add_argument("--input", help="raw source: TFRecord file/dir, MM-GRAPH or parquet dir")
    parser.add_argument("--images", help="directory of image files (WikiWeb2M)")
    parser.add_argument("--output", required=True, help="cache root; results go in <output>/<key>")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a locally started Ray")
    add_config_arguments(parser)
    add_verbose_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_verbosity(args)
    cfg = config_from_args(args, parser)
    data = cfg.data
    data = dataclasses.replace(
        data,
        dataset=args.dataset or data.dataset,
        input=args.input if args.input is not None else data.input,
        images=args.images if args.images is not None else data.images,
    )
    if data.dataset in _NEEDS_INPUT:
        if data.input is None:
            parser.error(f"--input DIR is required for --dataset {data.dataset}")
        if not Path(data.input).exists():
            parser.error(f"--input {data.input}: no such file or directory")
        if data.dataset in _NEEDS_DIR and (problem := check_input_dir(data.dataset, data.input)):
            parser.error(problem)
    cfg = dataclasses.replace(cfg, data=data).validate()

    from g4mm.pipeline.preprocess import run_preprocess  # imports Ray: after argument checks

    try:
        report = run_preprocess(cfg, args.output, num_cpus=args.num_cpus)
    except INPUT_ERRORS as exc:
        print(f"error: {input_error_message(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
