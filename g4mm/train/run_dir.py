"""A run directory: resolved config, metrics, predictions, history and PNG curves."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

#: the files a finished run directory holds (besides checkpoints/), in the order they are named
RUN_FILES = ("config.yaml", "metrics.json", "predictions.jsonl", "history.jsonl", "loss.png",
             "metrics.png")  # fmt: skip


def new_run_dir(cfg: Any, output: str | None = None) -> Path:
    """``output`` if given, else ``<train.output_dir>/<name>-<variant>-<timestamp>``."""
    if output:
        path = Path(output)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(cfg.train.output_dir) / f"{cfg.name}-{cfg.model.variant}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def resolve_storage_path(storage_path: str) -> str:
    """``train.storage_path`` as every node must see it: a filesystem URI (``s3://bucket/runs``,
    ``gs://...``, ``file:///abs/path``; anything ``pyarrow.fs.FileSystem.from_uri`` reads) is
    kept as given, a plain path is made absolute (Ray Train workers run in other directories)."""
    if "://" in storage_path:
        return storage_path
    return str(Path(storage_path).expanduser().resolve())


def copy_run_dir(run_dir: Path, storage_path: str) -> str:
    """Copy the run directory (config, metrics, predictions, plots, ``checkpoints/best``) to
    ``<storage_path>/<run_dir.name>`` on any pyarrow filesystem; returns where it went.

    Ray Train writes its checkpoints under ``<storage_path>/<run_dir.name>-<id>/`` itself; this
    puts the results beside them, so a run on a cluster outlives its (driver) node.
    """
    import pyarrow.fs

    storage_path = resolve_storage_path(storage_path)
    fs, root = pyarrow.fs.FileSystem.from_uri(storage_path)
    dest = f"{root.rstrip('/')}/{run_dir.name}"
    base, sep, query = storage_path.partition("?")  # e.g. s3://bucket/runs?region=us-west-2
    where = f"{base.rstrip('/')}/{run_dir.name}{sep}{query}"
    if isinstance(fs, pyarrow.fs.LocalFileSystem) and Path(dest).resolve() == run_dir.resolve():
        return where  # the run directory already is that place
    fs.create_dir(dest, recursive=True)
    pyarrow.fs.copy_files(
        str(run_dir), dest,
        source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs,
    )  # fmt: skip
    return where


def _clean(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, through dicts, lists
    and tuples: JSON has no NaN, and a metric that could not be computed reads as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, obj: Any) -> None:
    """Valid JSON always: non-finite floats become null (:func:`_clean`)."""
    path.write_text(json.dumps(_clean(obj), indent=2, default=str, allow_nan=False) + "\n")


def write_predictions(path: Path, predictions: list[dict]) -> None:
    with path.open("w") as fh:
        for row in predictions:
            fh.write(json.dumps(_clean(row), default=str, allow_nan=False) + "\n")


def _train_curve(history: list[dict]) -> tuple[list[int], list[float]]:
    """Every logged train loss (``train_curve`` of each evaluation), else one per evaluation."""
    points = [tuple(pt) for h in history for pt in h.get("train_curve") or ()]
    if not points:
        points = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    return [int(x) for x, _ in points], [float(y) for _, y in points]


def plot_history(
    history: list[dict], run_dir: Path, final: dict[str, Any] | None = None, title: str = ""
) -> list[Path]:
    """``loss.png``: the train loss at every log line and the validation loss at every
    evaluation; ``metrics.png``: one panel per validation metric (each on its own scale), the
    test score of the selected checkpoint marked at its step. ``title`` names the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return []
    final = final or {}
    steps = [h["step"] for h in history]
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4))
    x, y = _train_curve(history)
    if x:
        ax.plot(x, y, label="train (each log line)", linewidth=1.2)
    if any("val_loss" in h for h in history):
        ax.plot(steps, [h.get("val_loss", float("nan")) for h in history], "o-", label="val")
    ax.set(xlabel="optimizer step", ylabel="target cross-entropy (nats / token)",
           title=f"{title}: loss" if title else "loss")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=110)
    plt.close(fig)
    paths.append(run_dir / "loss.png")

    metrics = sorted(
        {k for h in history for k in h if k.startswith("val_") and k != "val_loss"}
        - {f"val_{p}bleu{n}" for p in ("", "paper_") for n in (1, 2, 3)}
        - {"val_chance", "val_zero_shot_chance"}
    )
    if metrics:
        cols = min(3, len(metrics))
        rows = -(-len(metrics) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
        for ax, key in zip(axes.flat, metrics, strict=False):
            name = key.removeprefix("val_")
            ax.plot(steps, [h.get(key, float("nan")) for h in history], "o-", label="val")
            test = final.get(f"test_{name}", final.get(name))
            best = final.get("best_step")
            if isinstance(test, (int, float)) and best is not None:
                ax.plot([best], [test], "r*", markersize=11, label="test (selected)")
            ax.set(title=name, xlabel="optimizer step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(metrics):]:
            ax.axis("off")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(run_dir / "metrics.png", dpi=110)
        plt.close(fig)
        paths.append(run_dir / "metrics.png")
    return paths


def run_summary(final: dict[str, Any], keys: list[str], run_dir: Path) -> str:
    """The lines a finished run ends with: test metrics, wall time, where it went, and the
    command to look at it, e.g.::

        test metrics: bleu4 0.5648  rougeL 0.8203  cider 4.8363 | paper: bleu4 0.4957 ...
        wall time 8m36s; run directory: runs/default-hop_diffused-20261203-163228
        (config.yaml, metrics.json, predictions.jsonl, history.jsonl, loss.png, metrics.png)
        look at it: python jobs/evaluate.py --predictions runs/.../predictions.jsonl
    """
    def cells(names: list[str]) -> str:
        return "  ".join(f"{k.removeprefix('paper_')} {final[k]:.4f}" for k in names)

    ours = [k for k in keys if k in final and not k.startswith("paper_")]
    paper = [k for k in keys if k in final and k.startswith("paper_")]
    line = "test metrics: " + cells(ours) + (f" | paper: {cells(paper)}" if paper else "")
    wall = final.get("total_wall_s", 0.0)
    predictions = run_dir / "predictions.jsonl"
    look = (f"python jobs/evaluate.py --predictions {predictions}" if "cider" in keys
            or "paper_cider" in keys else f"less {predictions}")  # fmt: skip
    files = ", ".join(n for n in RUN_FILES if (run_dir / n).exists())
    return "\n".join([
        line,
        f"wall time {int(wall // 60)}m{wall % 60:02.0f}s; run directory: {run_dir}",
        f"({files})",
        f"look at it: {look}",
    ])  # fmt: skip


def write_run_outputs(
    run_dir: Path,
    cfg: Any,
    history: list[dict],
    final: dict[str, Any],
    predictions: list[dict],
) -> None:
    """config.yaml, history.jsonl, metrics.json, predictions.jsonl, loss.png, metrics.png."""
    cfg.save_yaml(run_dir / "config.yaml")
    write_predictions(run_dir / "history.jsonl", history)
    write_json(run_dir / "metrics.json", final)
    write_predictions(run_dir / "predictions.jsonl", predictions)
    plot_history(history, run_dir, final, f"{cfg.name} ({cfg.model.variant})")
