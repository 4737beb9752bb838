"""Evaluate a trained Graph4MM checkpoint on a split, or score a predictions file without a model.

Usage: python jobs/evaluate.py --checkpoint PATH [--config NAME|PATH] [--set section.key=value ...]
[--split test] [--prep-root DIR] [--output DIR]
       python jobs/evaluate.py --predictions FILE.jsonl [--protocol coco|paper|both] [--json OUT]

``--predictions`` scores any file of JSON lines with ``prediction`` and ``reference`` (a string
or a list of strings; the ``predictions.jsonl`` of a run, or another system's outputs) under
COCO's protocol and/or the paper's (:mod:`g4mm.eval.paper_protocol`), prints a table and with
``--json`` writes the scores. A bad line fails naming its number.

The checkpoint is loaded with ``torch.load(weights_only=True)``: a file holding anything but
tensors and plain containers is refused. Without ``--config`` the config stored in the checkpoint
is used (``--set`` overrides apply on top of it); a config whose model differs from the
checkpoint's fails, naming the differing ``model.*`` fields. Preprocessing goes through the cache
(a cache hit needs no Ray). Prints the metrics; ``--output DIR`` also gets metrics.json and
predictions.jsonl.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

from g4mm.config import PROTOCOLS, ConfigError, ExperimentConfig, load_config, parse_override


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="examples:\n"
        "  python jobs/evaluate.py --checkpoint runs/x/checkpoints/best --output ev\n"
        "  python jobs/evaluate.py --predictions runs/x/predictions.jsonl --protocol both",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", metavar="PATH",
        help="checkpoint.pt or the directory holding it (e.g. RUN/checkpoints/best)",
    )  # fmt: skip
    source.add_argument(
        "--predictions", metavar="FILE.jsonl",
        help="score this predictions file (JSON lines with prediction, reference) without a model",
    )  # fmt: skip
    parser.add_argument(
        "--protocol", choices=PROTOCOLS,
        help="caption scoring protocol (default: both for --predictions, eval.protocol of the "
        "config for --checkpoint)",
    )  # fmt: skip
    parser.add_argument("--json", metavar="OUT", help="with --predictions: write the scores here")
    parser.add_argument(
        "--config", metavar="NAME|PATH",
        help="experiment config (a shipped name or a .yaml path); default: the checkpoint's own",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=None, metavar="SECTION.KEY=VALUE",
        help="override one config field (repeatable; VALUE parsed as YAML)",
    )  # fmt: skip
    parser.add_argument("--split", default="test", help="split to evaluate (default: %(default)s)")
    parser.add_argument("--prep-root", help="preprocess cache root (default: <artifact_dir>/prep)")
    parser.add_argument("--output", metavar="DIR", help="write metrics.json + predictions.jsonl")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a locally started Ray (cache miss)")
    return parser


def resolve_config(state: dict, config: str | None, overrides: list[str]) -> ExperimentConfig:
    """``--config`` (+ overrides) when given, else the checkpoint's stored config (+ overrides)."""
    if config is not None:
        return load_config(config, overrides)
    if not isinstance(state.get("config"), dict):
        raise ConfigError("the checkpoint stores no config: pass --config NAME|PATH")
    cfg = ExperimentConfig.from_dict(state["config"])
    return cfg.updated(dict(parse_override(o) for o in overrides)) if overrides else cfg


def score_file(path: str, protocol: str, json_out: str | None) -> int:
    """Score a predictions file; print a table (COCO and paper side by side), maybe write JSON."""
    from g4mm.eval.metrics import score_captions
    from g4mm.eval.predictions_file import PredictionsFileError, read_predictions

    try:
        predictions, references = read_predictions(path)
    except PredictionsFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    scores = score_captions(predictions, references, protocol)
    print(f"{path}: {len(predictions)} predictions, protocol {protocol}")
    names = dict.fromkeys(k.removeprefix("paper_") for k in scores)
    print(f"{'metric':<8} {'coco':>8} {'paper':>8}")
    for name in names:
        cells = [scores.get(key) for key in (name, f"paper_{name}")]
        print(f"{name:<8} " + " ".join("       -" if v is None else f"{v:8.4f}" for v in cells))
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(scores, indent=2) + "\n")
        print(f"wrote {json_out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.predictions:
        return score_file(args.predictions, args.protocol or "both", args.json)
    if args.json:
        parser.error("--json goes with --predictions (a checkpoint's scores go to --output)")

    from g4mm.train.checkpoint import check_compatible, load_checkpoint

    try:
        state = load_checkpoint(args.checkpoint)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        print(f"error: refusing {args.checkpoint}: not a weights-only checkpoint ({exc})",
              file=sys.stderr)  # fmt: skip
        return 1
    if not isinstance(state, dict) or "adapter" not in state:
        print(f"error: {args.checkpoint} is not a Graph4MM adapter checkpoint", file=sys.stderr)
        return 1
    try:
        cfg = resolve_config(state, args.config, args.overrides or [])
    except ConfigError as exc:
        parser.error(str(exc))
    if args.protocol:
        cfg.eval.protocol = args.protocol
    try:
        check_compatible(state, cfg.model, source=f"checkpoint {args.checkpoint}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    from g4mm.data.prepared import available_splits
    from g4mm.pipeline.preprocess import run_preprocess
    from g4mm.train.components import evaluate_checkpoint, pick_device
    from g4mm.train.run_dir import write_json, write_predictions

    cfg.data.artifact_dir = str(Path(cfg.data.artifact_dir).resolve())
    prep_root = args.prep_root or str(Path(cfg.data.artifact_dir) / "prep")
    prep = run_preprocess(cfg, prep_root, num_cpus=args.num_cpus)  # a cache hit needs no Ray
    prep_dir = prep["output"]
    splits = available_splits(prep_dir)
    if args.split not in splits:
        print(f"error: no split {args.split!r} in {prep_dir} (has {splits})", file=sys.stderr)
        return 1

    device = pick_device(cfg.train.use_gpu)
    metrics, predictions = evaluate_checkpoint(cfg, prep_dir, state, args.split, device)
    print(f"checkpoint {args.checkpoint} (step {state.get('step')}), split {args.split}, "
          f"{len(predictions)} samples")  # fmt: skip
    print(json.dumps(metrics, indent=2))
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_json(
            out / "metrics.json",
            {**metrics, "split": args.split, "samples": len(predictions),
             "checkpoint": str(Path(args.checkpoint).resolve()), "step": state.get("step")},
        )  # fmt: skip
        write_predictions(out / "predictions.jsonl", predictions)
        print(f"wrote {out / 'metrics.json'} and {out / 'predictions.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
