"""Embed stage: frozen text / vision encoders over each unique text and image, once.

Runs as Ray Data ``map_batches`` with an actor pool (one model load per actor; one GPU per actor
when the cluster has GPUs). Output rows follow :data:`g4mm.data.schema.FEATURE_SCHEMA`
(``key = feature_key(kind, value)``, ``feature = list<float32>``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["ImageEmbedder", "TextEmbedder", "features_table"]


def _feature_schema() -> pa.Schema:
    from g4mm.data.schema import FEATURE_SCHEMA

    return FEATURE_SCHEMA


def features_table(keys: list[str], feats: np.ndarray) -> pa.Table:
    """A FEATURE_SCHEMA table from keys and a ``(B, D)`` array."""
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    b, d = feats.shape
    offsets = pa.array(np.arange(0, (b + 1) * d, d, dtype=np.int32))
    values = pa.ListArray.from_arrays(offsets, pa.array(feats.reshape(-1)))
    schema = _feature_schema()
    values = values.cast(schema.field("feature").type)
    return pa.Table.from_arrays([pa.array(keys, pa.string()), values], schema=schema)


def _device():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(1)  # one CPU per actor; more threads only oversubscribe
    return torch.device("cpu")


class TextEmbedder:
    """Actor: mean-pooled last hidden states of the frozen text encoder.

    Args:
        name: backbone name (``tiny``, ``opt-125m``, a local directory...).
        artifact_dir: where local backbones live.
        max_length: token cap per text.
    """

    def __init__(self, name: str, artifact_dir: str, max_length: int = 256) -> None:
        from g4mm.model import load_lm

        self.device = _device()
        model, self.tokenizer = load_lm(name, artifact_dir)
        self.model = model.eval().requires_grad_(False).to(self.device)
        limit = getattr(model.config, "max_position_embeddings", None) or max_length
        self.max_length = int(min(max_length, limit))

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from g4mm.data.schema import feature_key
        from g4mm.model import mean_pooled_text_features

        texts = [str(t) for t in batch.column("value").to_pylist()]
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            feats = mean_pooled_text_features(
                self.model, enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
            )
        keys = [feature_key("text", t) for t in texts]
        return features_table(keys, feats.float().cpu().numpy())


#: images are shrunk to this longest side before the encoder's processor (which resizes to its
#: own ~224 px): 64 full-size photos per batch would otherwise sit in an embed actor's memory
EMBED_MAX_SIDE = 1024


def _open_image(path: str):
    from g4mm.data.images import load_image

    return load_image(path, max_side=EMBED_MAX_SIDE)


class ImageEmbedder:
    """Actor: pooled output of the frozen vision encoder for image files.

    Images that fail to load here (changed since the read stage) are left out of the output.
    """

    def __init__(self, name: str, artifact_dir: str) -> None:
        from g4mm.model import load_vision

        self.device = _device()
        model, self.processor = load_vision(name, artifact_dir)
        self.model = model.eval().requires_grad_(False).to(self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from g4mm.data.schema import feature_key
        from g4mm.model import pooled_image_features

        paths, images = [], []
        for p in batch.column("value").to_pylist():
            try:
                images.append(_open_image(p))
                paths.append(p)
            except Exception as err:  # any decode error: leave the image out
                print(f"[embed] WARNING cannot load {p}: {err}", flush=True)
        if not images:
            return features_table([], np.zeros((0, self.model.config.hidden_size), np.float32))
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            feats = pooled_image_features(self.model, pixels.to(self.device))
        keys = [feature_key("image", p) for p in paths]
        return features_table(keys, feats.float().cpu().numpy())
