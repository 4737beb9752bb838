"""Read a committed preprocess directory back: sample splits as Ray Datasets, features as dicts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray

from g4mm.pipeline.cache import is_done

__all__ = ["available_splits", "load_features", "load_split_dataset"]


def _check(prep_dir: str | os.PathLike[str]) -> Path:
    path = Path(prep_dir)
    if not is_done(path):
        raise FileNotFoundError(
            f"{path} is not a finished preprocess directory (no DONE marker); run "
            "jobs/preprocess.py and pass the printed output directory"
        )
    return path


def available_splits(prep_dir: str | os.PathLike[str]) -> list[str]:
    """The splits that have sample shards in ``prep_dir``."""
    root = _check(prep_dir) / "samples"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def load_split_dataset(prep_dir: str | os.PathLike[str], split: str) -> ray.data.Dataset:
    """The samples of ``split`` (SAMPLE_SCHEMA rows) as a lazily read Ray Dataset.

    Raises:
        FileNotFoundError: ``prep_dir`` unfinished, or no shards for ``split`` (lists the
            available ones).
    """
    path = _check(prep_dir) / "samples" / split
    if not path.is_dir():
        raise FileNotFoundError(
            f"no {split!r} samples in {prep_dir} (available: {available_splits(prep_dir)})"
        )
    return ray.data.read_parquet(str(path))


def _read_features(path: Path) -> dict[str, np.ndarray]:
    if not path.is_dir() or not any(path.glob("*.parquet")):
        return {}
    table = pq.read_table(str(path))
    keys = table.column("key").to_pylist()
    feats = table.column("feature").combine_chunks()
    if len(keys) == 0:
        return {}
    dim = len(feats[0])
    values = feats.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    matrix = values.reshape(len(keys), dim)
    return {k: matrix[i] for i, k in enumerate(keys)}


def load_features(
    prep_dir: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(text_features, image_features)``: ``feature_key -> float32 vector`` (driver-side)."""
    root = _check(prep_dir) / "features"
    return _read_features(root / "text"), _read_features(root / "image")
