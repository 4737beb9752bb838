"""Everything a training process needs, built from one config and a preprocess directory.

Ray-free: the Ray Train worker, the in-process trainer and ``jobs/evaluate.py`` all build the
model, collator and evaluation rows here, so they cannot drift apart.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from g4mm.data.collate import GraphCollator, length_bucketed_batches, rows_from_columns
from g4mm.data.prepared import (
    available_splits,
    class_names_from_rows,
    read_classes,
    read_features,
    read_rows,
)
from g4mm.eval import evaluate_rows
from g4mm.model import Graph4MM
from g4mm.model.encoders import image_feature_dim, text_feature_dim
from g4mm.model.inputs import Graph4MMInputs
from g4mm.model.layout import LayoutSpec
from g4mm.train.loop import frozen_dtype_for


@dataclass
class Components:
    model: Graph4MM
    collator: GraphCollator
    class_names: list[str] | None
    device: torch.device
    zero_shot_classes: list[int] | None = None


def pick_device(use_gpu: str | bool) -> torch.device:
    """``auto``: CUDA when present; ``true`` demands it; ``false`` stays on the CPU."""
    want = str(use_gpu).lower()
    if want == "true" and not torch.cuda.is_available():
        raise RuntimeError("train.use_gpu = true but no CUDA device is visible")
    return torch.device("cuda" if want != "false" and torch.cuda.is_available() else "cpu")


class ClassesError(ValueError):
    """A config asks for a classification metric the data cannot give."""


def evaluation_classes(cfg: Any, prep_dir: str) -> tuple[list[str] | None, list[int] | None]:
    """``(class_names, zero_shot_classes)`` of the preprocessed data: the source's own files
    (``classes.json`` of the preprocess directory), else what the rows say.

    Raises:
        ClassesError: ``eval.metrics`` names ``zero_shot_accuracy`` but the source has no
            ``class_names.json`` (zero-shot ranking reads the class *names*) or no held-out
            classes (``zero_shot_classes.json``), naming the file expected.
    """
    rows = [r for split in available_splits(prep_dir) for r in read_rows(prep_dir, split)]
    info = read_classes(prep_dir) or {}
    names = info.get("class_names") or class_names_from_rows(rows)
    zero_shot = info.get("zero_shot_classes")
    if zero_shot is None:
        zero_shot = sorted({int(r["label"]) for r in rows if r.get("zero_shot")}) or None
    if "zero_shot_accuracy" in cfg.eval.metrics:
        where = Path(info.get("input") or cfg.data.input or prep_dir)
        if "class_names" in info and not info["class_names"]:
            raise ClassesError(
                f"eval.metrics names zero_shot_accuracy, but {where / 'class_names.json'} does "
                "not exist: zero-shot classification ranks class names (a JSON list of strings, "
                "one per class id), and classes called 'class 0', 'class 1', ... name nothing "
                "a model could recognise; add the file or drop zero_shot_accuracy"
            )
        if not zero_shot:
            raise ClassesError(
                f"eval.metrics names zero_shot_accuracy, but no class is held out: "
                f"{where / 'zero_shot_classes.json'} (a JSON list of class ids kept out of "
                "training) is missing or empty; add it or drop zero_shot_accuracy"
            )
    return names, (list(map(int, zero_shot)) if zero_shot else None)


def collate_counter(
    collator: GraphCollator, device: torch.device | None = None
) -> Callable[[], dict[str, int]]:
    """``train_loop``'s ``collate_counts``: ``collator``'s counts since the last call
    (:meth:`GraphCollator.drain_counts`: train and validation batches alike), summed over the
    ranks when ``torch.distributed`` is initialised (every rank calls it at each evaluation;
    ``device`` holds the sum for the backend: CUDA for NCCL)."""

    def counts() -> dict[str, int]:
        drained = collator.drain_counts()
        if dist.is_available() and dist.is_initialized():
            values = torch.tensor(list(drained.values()), dtype=torch.int64, device=device)
            dist.all_reduce(values)
            drained = dict(zip(drained, values.tolist(), strict=True))
        return drained

    return counts


def build_components(cfg: Any, prep_dir: str, device: torch.device) -> Components:
    """Frozen backbones + adapter (seeded by ``cfg.train.seed``), collator over cached features.

    Raises:
        RuntimeError: a tiny backbone in ``data.artifact_dir`` is now another recipe's build
            (a run of other data sharing the directory swapped it in after this run's
            preprocessing): the features were computed with the other one.
    """
    if "tiny" in (cfg.model.lm, cfg.model.vision, cfg.model.text_encoder):
        from g4mm.pipeline.cache import stale_tiny_backbones

        stale = stale_tiny_backbones(cfg)
        if stale:
            raise RuntimeError(
                f"the tiny {' and '.join(stale)} in {cfg.data.artifact_dir}/backbones is now "
                "built from another recipe: a run of other data sharing this data.artifact_dir "
                "switched it after this run preprocessed. Rerun (it switches back), or give "
                "concurrent runs of different data their own data.artifact_dir."
            )
    torch.manual_seed(cfg.train.seed)
    model = Graph4MM.from_config(cfg.model, artifact_dir=cfg.data.artifact_dir).to(device)
    model.cast_frozen(frozen_dtype_for(device, cfg.train.precision, cfg.train.frozen_dtype))
    text_features, image_features = read_features(prep_dir)
    collator = GraphCollator(
        tokenizer=model.tokenizer,
        text_features=text_features,
        image_features=image_features,
        text_dim=text_feature_dim(model.lm),
        image_dim=image_feature_dim(model.vision),
        layout=LayoutSpec.from_config(cfg, model.bare_adapter.token_groups),
        max_target_tokens=cfg.data.max_target_tokens,
    )
    names, zero_shot = evaluation_classes(cfg, prep_dir)
    return Components(model, collator, names, device, zero_shot)


def make_evaluator(parts: Components, cfg: Any, rows: Sequence[dict]):
    """A zero-argument callable returning ``evaluate_rows`` metrics on ``rows``."""

    def evaluate() -> dict[str, float]:
        metrics, _ = evaluate_rows(
            parts.model, parts.collator, list(rows), cfg.eval, parts.class_names, parts.device,
            parts.zero_shot_classes,
        )  # fmt: skip
        return metrics

    return evaluate


def cycle_batches(
    rows: Sequence[dict],
    collator: GraphCollator,
    batch_size: int,
    seed: int,
    bucket_window: int = 0,
) -> Iterator[Graph4MMInputs]:
    """Endless shuffled epochs of full batches (in-process training); with ``bucket_window``
    > 0, each epoch's batches are length-bucketed (``train.bucket_window``)."""
    if len(rows) < batch_size:
        raise ValueError(f"{len(rows)} training rows: fewer than one batch of {batch_size}")
    if bucket_window:
        encoded = collator.encode(rows)  # tokenized once, for the lengths and every epoch
        lengths = encoded.lengths()
        for epoch in itertools.count():
            for group in length_bucketed_batches(lengths, batch_size, seed + epoch, bucket_window):
                yield collator([rows[i] for i in group], encoded.select(group))
    rng = random.Random(seed)
    order = list(range(len(rows)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collator([rows[i] for i in order[start : start + batch_size]])


def bucketing_note(window: int, batch_size: int) -> str:
    """The log line a run prints when ``train.bucket_window`` is on."""
    return f"length-bucketed batches: sorted by token length in windows of {window} x {batch_size}"


def bucketed_chunk_batches(
    chunks: Iterable[Any], collator: GraphCollator, batch_size: int, seed: int, window: int
) -> Iterator[Graph4MMInputs]:
    """Length-bucketed batches from a stream of row chunks (e.g. Ray Data batches of
    ``window * batch_size`` rows): each chunk is sorted by token length and cut into full
    batches, in shuffled order; a chunk's last partial batch is dropped."""
    for index, chunk in enumerate(chunks):
        rows = rows_from_columns(chunk)
        encoded = collator.encode(rows)  # tokenized once: lengths, then the batches
        for group in length_bucketed_batches(encoded.lengths(), batch_size, seed + index, window):
            yield collator([rows[i] for i in group], encoded.select(group))


def evaluate_checkpoint(
    cfg: Any, prep_dir: str, state: dict, split: str, device: torch.device
) -> tuple[dict[str, float], list[dict]]:
    """Metrics and per-sample predictions of a checkpoint's adapter on ``split``."""
    from g4mm.train.checkpoint import restore_adapter

    parts = build_components(cfg, prep_dir, device)
    restore_adapter(parts.model, state, cfg.model)
    rows = read_rows(prep_dir, split)
    return evaluate_rows(
        parts.model, parts.collator, rows, cfg.eval, parts.class_names, parts.device,
        parts.zero_shot_classes,
    )  # fmt: skip
