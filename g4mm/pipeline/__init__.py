"""Ray Data pipeline: preprocess sources into sample shards and embed them, cached.

- :func:`~g4mm.pipeline.preprocess.run_preprocess`: the whole job (see that module's stages).
- :func:`~g4mm.pipeline.dataset.load_split_dataset` / :func:`~g4mm.pipeline.dataset.load_features`:
  read the results back for training.
- :func:`~g4mm.pipeline.ray_runtime.init_ray`: join or start Ray with the pipeline's settings.
"""

from g4mm.pipeline.dataset import available_splits, load_features, load_split_dataset
from g4mm.pipeline.preprocess import run_preprocess
from g4mm.pipeline.ray_runtime import init_ray

__all__ = [
    "available_splits",
    "init_ray",
    "load_features",
    "load_split_dataset",
    "run_preprocess",
]
