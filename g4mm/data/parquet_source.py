"""Generic parquet layout -> one :class:`SourceGraph`.

Directory layout:

- ``nodes.parquet``: ``id`` (string, or integer: ids are compared as strings, so integer ids
  match their edge endpoints), ``text`` (string, nullable), ``split`` (string, nullable) are
  required; ``image_path`` (string, nullable; relative to the dataset directory; one resolving
  outside it only with ``data.allow_outside_images``),
  ``label`` (int64, nullable), ``target_text`` (string, nullable; blank = a skipped target)
  and ``prompt`` (string, nullable) are optional (all-null when absent);
- ``edges.parquet``: ``src``, ``dst`` (node ids, compared as strings), ``type`` (``"text-text"``,
  ``"image-image"``, ``"text-image"``; ``"image-text"`` accepted), undirected;
- optional ``class_names.json`` (list of str) and ``zero_shot_classes.json`` (list of int).

Targets are the nodes whose ``split`` is not null.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from g4mm.data.images import check_images, resolve_image
from g4mm.data.records import ReadStats, SourceGraph, TargetSpec, normalise_split
from g4mm.graph import EdgeType, MultimodalGraph

__all__ = ["EDGE_COLUMNS", "NODE_COLUMNS", "read_parquet_graph"]

log = logging.getLogger(__name__)

#: Required columns of nodes.parquet.
NODE_COLUMNS: tuple[str, ...] = ("id", "text", "split")
_OPTIONAL_NODE_COLUMNS: tuple[str, ...] = ("image_path", "label", "target_text", "prompt")
#: Required columns of edges.parquet.
EDGE_COLUMNS: tuple[str, ...] = ("src", "dst", "type")

_EDGE_TYPES = {
    "text-text": EdgeType.TEXT_TEXT,
    "image-image": EdgeType.IMAGE_IMAGE,
    "text-image": EdgeType.TEXT_IMAGE,
    "image-text": EdgeType.TEXT_IMAGE,
}


def _values(t: pa.DataType) -> pa.DataType:
    """A dictionary-encoded column's value type (pandas categoricals), else ``t``."""
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_text(t: pa.DataType) -> bool:
    t = _values(t)
    view = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or view(t)


def _is_id(t: pa.DataType) -> bool:
    return _is_text(t) or pa.types.is_integer(_values(t))


def _is_label(t: pa.DataType) -> bool:
    return pa.types.is_integer(_values(t))


#: what each column may hold (an all-null column, Arrow type ``null``, fits every one)
_COLUMN_TYPES: dict[str, tuple[str, Any]] = {
    "id": ("string or integer", _is_id),
    "src": ("string or integer", _is_id),
    "dst": ("string or integer", _is_id),
    "label": ("integer", _is_label),
    **dict.fromkeys(("text", "split", "image_path", "target_text", "prompt", "type"),
                    ("string", _is_text)),
}


def _check_types(path: Path, schema: pa.Schema, columns: tuple[str, ...]) -> None:
    """Raise ValueError naming every column of ``columns`` whose Arrow type is not allowed
    (e.g. ``label`` stored as strings, or as floats that would silently round)."""
    wrong = []
    for c in columns:
        if c not in schema.names or c not in _COLUMN_TYPES:
            continue
        found = schema.field(c).type
        expected, fits = _COLUMN_TYPES[c]
        if not pa.types.is_null(found) and not fits(found):
            wrong.append(f"column {c!r} is {found}, expected {expected}")
    if wrong:
        raise ValueError(f"{path}: {'; '.join(wrong)}")


def _read_columns(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, list[Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"parquet source: required file {path} is missing")
    table = pq.read_table(path)
    for column in required:
        if column not in table.column_names:
            raise ValueError(
                f"{path}: missing column {column!r} (has {', '.join(table.column_names)})"
            )
    _check_types(path, table.schema, (*required, *optional))
    n = table.num_rows
    return {
        c: table.column(c).to_pylist() if c in table.column_names else [None] * n
        for c in (*required, *optional)
    }


def _load_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from None


def _blank(value: str | None) -> bool:
    return value is None or not str(value).strip()


def read_parquet_graph(
    root: str | os.PathLike[str],
    stats: ReadStats,
    *,
    image_workers: int = 8,
    allow_outside_images: bool = False,
) -> SourceGraph:
    """Read ``nodes.parquet`` + ``edges.parquet`` in ``root`` into one :class:`SourceGraph`.

    Images are checked (:func:`~g4mm.data.images.check_image`); a missing / corrupt file is
    counted and the node keeps no image; IMAGE_IMAGE edges that lost an endpoint image are
    dropped (counted in ``stats.skipped["edge_lost_image"]``, unit = undirected edges).
    Targets: ``prompt`` column, else the node text (``""`` without one), which is also what
    the raw layout reads as the target's own text before its neighbours' texts (nearest hop
    first); ``target_text``
    column, else the class name of ``label`` (``"class <id>"`` without class names). Skipped
    targets (counted): ``"unknown_split"`` (warned), ``"no_target"`` (neither target_text nor
    label), ``"empty_target"`` (a blank or whitespace-only target_text, warned; the same reason
    as WikiWeb2M's blank summaries), ``"zero_shot_heldout_train"`` (train targets of a
    zero-shot class). Node ids and edge endpoints are compared as strings (integer ids work).
    An ``image_path`` resolving outside ``root`` (absolute, ``..``, a symlink out) is a
    counted corrupt image, never opened, unless ``allow_outside_images``.

    Raises:
        FileNotFoundError: a parquet file is missing.
        ValueError: a missing column (named), or one of the wrong type (named, with the type
            found and the one expected); a duplicate or null node id; an edge to an
            unknown node id or of an unknown type, or a TEXT_TEXT / IMAGE_IMAGE edge whose
            endpoint has no text / image reference (naming the file, row and id); a label
            outside the class names.
    """
    root = Path(root)
    nodes_file, edges_file = root / "nodes.parquet", root / "edges.parquet"
    nodes = _read_columns(nodes_file, NODE_COLUMNS, _OPTIONAL_NODE_COLUMNS)
    edges = _read_columns(edges_file, EDGE_COLUMNS)
    class_names = _load_json(root / "class_names.json")
    zero_shot = _load_json(root / "zero_shot_classes.json")

    ids: list[str] = []
    index: dict[str, int] = {}
    for row, raw_id in enumerate(nodes["id"]):
        node_id = None if raw_id is None else str(raw_id)
        if node_id is None or node_id in index:
            what = "null" if node_id is None else f"duplicate {node_id!r}"
            raise ValueError(f"{nodes_file}: row {row}: {what} node id")
        index[node_id] = row
        ids.append(node_id)
    texts = [None if _blank(t) else str(t) for t in nodes["text"]]

    refs = nodes["image_path"]
    ref_rows = [r for r, ref in enumerate(refs) if not _blank(ref)]
    paths = [resolve_image(str(refs[r]), root) for r in ref_rows]
    images: list[str | None] = [None] * len(ids)
    inside = None if allow_outside_images else [root]
    statuses = check_images(paths, image_workers, inside=inside)
    for r, path, status in zip(ref_rows, paths, statuses, strict=True):
        stats.count_image(status)
        if status == "ok":
            images[r] = str(path)

    triples = []
    for row, ends in enumerate(zip(edges["src"], edges["dst"], strict=True)):
        u, v = (None if end is None else str(end) for end in ends)
        kind = edges["type"][row]
        for end in (u, v):
            if end not in index:
                raise ValueError(f"{edges_file}: row {row}: unknown node id {end!r}")
        etype = _EDGE_TYPES.get(str(kind).strip().lower())
        if etype is None:
            raise ValueError(
                f"{edges_file}: row {row}: unknown edge type {kind!r} "
                f"(expected one of {', '.join(_EDGE_TYPES)})"
            )
        iu, iv = index[u], index[v]
        if etype == EdgeType.TEXT_TEXT and (texts[iu] is None or texts[iv] is None):
            end = u if texts[iu] is None else v
            raise ValueError(
                f"{edges_file}: row {row}: text-text edge but node {end!r} has no text"
            )
        if etype == EdgeType.IMAGE_IMAGE and (images[iu] is None or images[iv] is None):
            end = u if images[iu] is None else v
            if _blank(refs[index[end]]):
                raise ValueError(
                    f"{edges_file}: row {row}: image-image edge but node {end!r} has no image_path"
                )
            stats.skip("edge_lost_image")
            continue
        triples.append((u, v, etype))

    labels = nodes["label"]
    num_classes = len(class_names) if class_names is not None else None
    for row, label in enumerate(labels):
        if label is not None and (label < 0 or (num_classes is not None and label >= num_classes)):
            raise ValueError(f"{nodes_file}: row {row}: label {label} not in [0, {num_classes})")
    graph = MultimodalGraph.from_edge_list(
        ids,
        texts,
        images,
        triples,
        labels=[-1 if label is None else int(label) for label in labels],
        name=str(root),
    )
    held_out = set(zero_shot or ())
    targets = []
    for row, raw_split in enumerate(nodes["split"]):
        if raw_split is None:
            continue
        split = normalise_split(raw_split)
        if split is None:
            log.warning("%s: row %d: unknown split %r, target skipped", nodes_file, row, raw_split)
            stats.skip("unknown_split")
            continue
        label = None if labels[row] is None else int(labels[row])
        if split == "train" and label is not None and label in held_out:
            stats.skip("zero_shot_heldout_train")
            continue
        target_text = nodes["target_text"][row]
        if target_text is not None and _blank(target_text):
            log.warning("%s: row %d: blank target_text, target skipped", nodes_file, row)
            stats.skip("empty_target")
            continue
        if target_text is None and label is not None:
            target_text = class_names[label] if class_names is not None else f"class {label}"
        if target_text is None:
            stats.skip("no_target")
            continue
        prompt = nodes["prompt"][row]
        targets.append(
            TargetSpec(
                node=row,
                split=split,
                prompt=str(prompt) if prompt is not None else (texts[row] or ""),
                target_text=target_text,
                label=label,
                segment=None if prompt is None else str(prompt),
            )
        )
    return SourceGraph(
        graph=graph,
        targets=targets,
        source=root.name,
        class_names=class_names,
        zero_shot_classes=None if zero_shot is None else [int(c) for c in zero_shot],
    )
