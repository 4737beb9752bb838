"""Arrow schemas of the preprocessed shards and the feature-cache key.

- :data:`SAMPLE_SCHEMA`: one row per target node (written by the preprocess stage, read by
  collate). Node lists are in the sample builder's seeded order (the target first when it
  carries the modality: :mod:`g4mm.data.samples`); edge lists hold LOCAL indices into those
  lists, source -> target. ``text_nodes`` are what the text encoder embeds;
  ``text_segments`` / ``image_captions`` what the raw layout's LM reads of the same nodes,
  ``text_order`` its reading order, ``image_owner`` the text node an image belongs to
  (:mod:`g4mm.model.layout`).
- :data:`FEATURE_SCHEMA`: one row per unique text or image, keyed by :func:`feature_key`.

All fields use Arrow's default (nullable) so tables that went through Ray Data / pandas still
compare equal to the schema; only ``target_text`` and ``label`` are ever null in practice.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import pyarrow as pa

__all__ = ["FEATURE_SCHEMA", "SAMPLE_SCHEMA", "SEQUENCE_FIELDS", "feature_key"]

#: Per-section sequence features of a WikiWeb2M record (read by g4mm.data.wikiweb2m, written
#: by the synthetic generator).
SEQUENCE_FIELDS: tuple[str, ...] = (
    "section_title",
    "section_depth",
    "section_heading_level",
    "section_parent_index",
    "section_clean_1st_sentence",
    "section_rest_sentence",
    "section_image_url",
    "section_image_captions",
    "is_section_summarization_sample",
)

_I32_LIST = pa.list_(pa.int32())

#: One row per target node.
SAMPLE_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("sample_id", pa.string()),  # "<source>#<node external id>"
        pa.field("split", pa.string()),  # "train" | "val" | "test"
        pa.field("prompt", pa.string()),
        pa.field("target_text", pa.string()),
        pa.field("label", pa.int64()),
        pa.field("zero_shot", pa.bool_()),
        pa.field("text_nodes", pa.list_(pa.string())),
        pa.field("text_hops", _I32_LIST),
        pa.field("text_edge_src", _I32_LIST),
        pa.field("text_edge_dst", _I32_LIST),
        pa.field("image_paths", pa.list_(pa.string())),
        pa.field("image_hops", _I32_LIST),
        pa.field("image_edge_src", _I32_LIST),
        pa.field("image_edge_dst", _I32_LIST),
        # what the raw layout's LM reads (g4mm.model.layout)
        pa.field("lead", pa.string()),  # before the target's own text, e.g. "summarize: "
        pa.field("cue", pa.string()),  # closes the input, e.g. ", summary:"
        pa.field("text_segments", pa.list_(pa.string())),  # per text node; target: leak-free
        pa.field("text_order", pa.list_(pa.int64())),  # reading order key per text node
        pa.field("image_captions", pa.list_(pa.string())),  # per image node ("" if none)
        pa.field("image_owner", _I32_LIST),  # local text node of each image, -1 if none
    ]
)

#: One row per unique text / image: its frozen-encoder feature vector.
FEATURE_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("feature", pa.list_(pa.float32())),
    ]
)


def feature_key(kind: Literal["text", "image"], value: str) -> str:
    """``kind + ":" + sha1(value as utf-8).hexdigest()``, the key of a text (its content) or an
    image (its resolved path) in the feature shards.

    Raises:
        ValueError: for a kind other than ``"text"`` / ``"image"``.
    """
    if kind not in ("text", "image"):
        raise ValueError(f"feature kind must be 'text' or 'image', got {kind!r}")
    return f"{kind}:{hashlib.sha1(value.encode('utf-8')).hexdigest()}"
