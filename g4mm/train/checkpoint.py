"""Adapter checkpoints: adapter + optimizer + scheduler + step + history, never frozen weights.

Saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``: only tensors and
plain Python containers, so a checkpoint cannot execute code. A checkpoint records the model
config it was trained with; restoring into a model built from another config fails with the
differing fields named (and the adapter load itself is strict).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"
#: Model fields that do not change the adapter's weights (implementation / regularisation).
_NOT_IN_SIGNATURE = frozenset({"dropout", "diffusion_impl"})


def model_signature(model_cfg: Any) -> dict[str, Any]:
    """The model-config fields an adapter checkpoint must agree on."""
    return {k: v for k, v in vars(model_cfg).items() if k not in _NOT_IN_SIGNATURE}


def save_checkpoint(directory: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/checkpoint.pt`` atomically: into a temporary file beside
    it, then renamed over it, so a process killed mid-write leaves the previous checkpoint
    whole (never a torn file that a resume would read)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    target = path / CHECKPOINT_FILE
    tmp = path / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def training_state(model, optimizer, scheduler, step: int, cfg, history: list[dict]) -> dict:
    """Everything needed to resume, as weights-only-loadable objects (``optimizer`` and
    ``scheduler`` None for an adapter with nothing to train: empty states)."""
    return {
        "adapter": model.adapter_state_dict(),
        "optimizer": {} if optimizer is None else optimizer.state_dict(),
        "scheduler": {} if scheduler is None else scheduler.state_dict(),
        "step": step,
        "history": history,
        "model_signature": model_signature(cfg.model),
        "config": cfg.to_dict(),
    }


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint file (or the directory holding it) safely (weights_only=True)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def check_compatible(state: dict[str, Any], model_cfg: Any, source: str = "checkpoint") -> None:
    """Raise ValueError naming every model field whose value differs from the checkpoint's."""
    ours = model_signature(model_cfg)
    # a field added after the checkpoint was written reads as its default, which is how that
    # checkpoint's model ran (e.g. model.hop_phrases: off)
    saved = {**model_signature(type(model_cfg)()), **state.get("model_signature", {})}
    diffs = [
        f"model.{k}: {source} {saved.get(k)!r} vs config {ours.get(k)!r}"
        for k in sorted(set(saved) | set(ours))
        if saved.get(k) != ours.get(k)
    ]
    if diffs:
        raise ValueError(f"{source} was trained with another model config: " + "; ".join(diffs))


def restore_adapter(model, state: dict[str, Any], model_cfg: Any, source: str = "checkpoint"):
    """Check the config signature, then load the adapter strictly."""
    check_compatible(state, model_cfg, source)
    model.load_adapter_state_dict(state["adapter"])
