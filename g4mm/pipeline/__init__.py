"""Ray Data pipeline: preprocess sources into sample shards and embed them, cached.

- :func:`~g4mm.pipeline.preprocess.run_preprocess`: the whole job (see that module's stages).
- :func:`~g4mm.pipeline.dataset.load_split_dataset` / :func:`~g4mm.pipeline.dataset.load_features`:
  read the results back for training.
- :func:`~g4mm.pipeline.ray_runtime.init_ray`: join or start Ray with the pipeline's settings.

Exports resolve lazily: a Ray Data worker unpickling ``g4mm.pipeline.sources.<fn>`` imports
this package, and must not pay for Ray Train, transformers or the model on the way (each worker
process would, once: seconds of CPU per worker on a small machine).
"""

from __future__ import annotations

from g4mm._lazy import lazy_exports

_EXPORTS = {
    "available_splits": "g4mm.pipeline.dataset",
    "load_features": "g4mm.pipeline.dataset",
    "load_split_dataset": "g4mm.pipeline.dataset",
    "run_preprocess": "g4mm.pipeline.preprocess",
    "init_ray": "g4mm.pipeline.ray_runtime",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
