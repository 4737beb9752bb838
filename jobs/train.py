"""Train and evaluate Graph4MM on Ray (placeholder until the training issue lands).

Usage: python jobs/train.py [--config NAME|PATH] [--set section.key=value ...] [--output DIR]
"""

from __future__ import annotations

import argparse
import sys

from g4mm.config import add_config_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--output", help="run directory (default: train.output_dir/<name>)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    print(f"resolved config {cfg.name!r}: variant={cfg.model.variant} dataset={cfg.data.dataset}")
    print(
        "jobs/train.py: Ray Train training is not implemented yet (it lands with the training "
        "issue); the library (g4mm.model, g4mm.graph, g4mm.config) is usable now.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
