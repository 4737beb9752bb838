"""Show exactly what the frozen LM reads for one preprocessed sample.

Usage: python jobs/inspect.py --prep PREP_DIR --split SPLIT --index I [--config NAME|PATH]
[--set section.key=value ...]

PREP_DIR is the directory jobs/preprocess.py (or jobs/train.py) printed. Prints the sample's
sample_id on the first line, then the LM input of the configured variant, context and token
placement (g4mm/model/layout.py), decoded, each run of graph tokens as a placeholder such as
``<4 graph tokens: image 2>``, then the target. Rows are numbered in sample_id order. Loads no
model weights: only the LM's tokenizer and the cached features (which nodes have one).

This file shares its name with the standard library's ``inspect``, and a script's folder comes
first on ``sys.path``: run as ``python jobs/<any job>.py``, ``import inspect`` (dataclasses and
torch do) would find this file. Imported under that name it therefore loads the standard
library's module in its place and does nothing else.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ != "__main__":  # imported as `inspect` because jobs/ is on sys.path
    import importlib.machinery
    import importlib.util

    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    _spec = importlib.machinery.PathFinder.find_spec(__name__, _path)
    _real = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _real  # what `import inspect` hands back
    _spec.loader.exec_module(_real)
else:
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def build_parser():
    import argparse

    from g4mm.config import add_config_arguments

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python jobs/inspect.py --prep artifacts/prep/<key> --split val --index 0 "
        "--set model.variant=text_only",
    )
    parser.add_argument("--prep", required=True, metavar="PREP_DIR", help="preprocess output dir")
    parser.add_argument("--split", default="val", help="split (default: %(default)s)")
    parser.add_argument("--index", type=int, default=0, help="row, in sample_id order")
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from g4mm.config import config_from_args

    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args, parser)

    from g4mm.data.collate import GraphCollator
    from g4mm.data.prepared import read_features, read_rows
    from g4mm.model.backbones import load_tokenizer
    from g4mm.model.graph4mm import adapter_token_groups
    from g4mm.model.layout import LayoutSpec, describe

    try:
        rows = read_rows(args.prep, args.split)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not 0 <= args.index < len(rows):
        parser.error(f"--index {args.index}: split {args.split!r} has rows 0..{len(rows) - 1}")
    row = rows[args.index]
    tokenizer = load_tokenizer(cfg.model.lm, cfg.data.artifact_dir)
    text_features, image_features = read_features(args.prep)
    spec = LayoutSpec.from_config(cfg, adapter_token_groups(cfg.model))
    collator = GraphCollator(
        tokenizer, text_features, image_features, 0, 0, spec, cfg.data.max_target_tokens
    )
    encoded = collator.encode([row])
    ids, slots, target = encoded.prompts[0], encoded.slots[0], encoded.targets[0]
    graph_tokens = sum(s >= 0 for s in slots)
    note = ", cut to fit data.max_input_tokens" if encoded.truncated[0] else ""
    print(row["sample_id"])
    print(
        f"# variant {cfg.model.variant}, context {cfg.model.context}, placement "
        f"{cfg.model.token_placement}: {len(ids)} input tokens, {graph_tokens} graph tokens{note}"
    )
    print("# what the frozen LM reads:")
    print(describe(ids, slots, spec.table, tokenizer))
    print("# target (the loss is on these tokens only):")
    print(tokenizer.decode(target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
