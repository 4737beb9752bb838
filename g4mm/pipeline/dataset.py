"""Read a committed preprocess directory back: sample splits as Ray Datasets, features as dicts."""

from __future__ import annotations

import os

import numpy as np
import ray

from g4mm.data.prepared import available_splits, read_features, split_path

__all__ = ["available_splits", "load_features", "load_split_dataset"]


def load_split_dataset(prep_dir: str | os.PathLike[str], split: str) -> ray.data.Dataset:
    """The samples of ``split`` (SAMPLE_SCHEMA rows) as a lazily read Ray Dataset.

    Raises:
        FileNotFoundError: ``prep_dir`` unfinished, or no shards for ``split`` (lists the
            available ones).
    """
    return ray.data.read_parquet(str(split_path(prep_dir, split)))


def load_features(
    prep_dir: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(text_features, image_features)``: ``feature_key -> float32 vector`` (driver-side)."""
    return read_features(prep_dir)
