"""MM-GRAPH (e.g. Ele-Fashion) node-classification directory -> one :class:`SourceGraph`.

Files in the directory (every ``.pt`` loaded with ``torch.load(weights_only=True)``):

- ``nc_edges-nodeid.pt``: ``LongTensor [E, 2]`` co-purchase edges between node ids;
- ``labels-w-missing.pt``: ``LongTensor [N]``, ``-1`` = unlabeled (defines ``N``);
- ``split.pt``: ``{"train_idx", "val_idx", "test_idx"}`` node-id tensors / lists;
- ``node_mapping.pt``: ``{asin: node id}``;
- ``<name>-raw-text.jsonl``: ``{"asin": ..., "raw_text": ...}`` per line;
- ``images/{asin}.jpg``; optional ``class_names.json`` (list of str) and
  ``zero_shot_classes.json`` (list of int).

Every node id ``0..N-1`` is a graph node (external id = its asin, or ``"node<i>"`` when
unmapped) carrying its raw text and its image when that file decodes. A co-purchase edge
becomes TEXT_TEXT when both ends have text, IMAGE_IMAGE when both have an image (both when
both hold), and TEXT_IMAGE (reachability only) otherwise: when only that pairing exists, or when
an end has neither text nor image. Such a content-less node joins no modality subgraph, but
its edges are kept so that hop distances are those of the co-purchase graph (A - X - B stays
two hops); those edges are logged.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from g4mm.data.images import check_images
from g4mm.data.records import ReadStats, SourceGraph, TargetSpec
from g4mm.graph import EdgeType, MultimodalGraph

__all__ = ["EDGES_FILE", "LABELS_FILE", "MAPPING_FILE", "SPLIT_FILE", "read_mmgraph"]

log = logging.getLogger(__name__)

EDGES_FILE = "nc_edges-nodeid.pt"
LABELS_FILE = "labels-w-missing.pt"
SPLIT_FILE = "split.pt"
MAPPING_FILE = "node_mapping.pt"
_SPLIT_KEYS = {"train": "train_idx", "val": "val_idx", "test": "test_idx"}


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"MM-GRAPH: required file {path} is missing")
    return path


def _check_no_nan(obj: Any, file: Path, where: str = "") -> None:
    """Raise ValueError naming ``file`` if any float tensor / float inside ``obj`` is NaN."""
    if isinstance(obj, Tensor):
        if obj.is_floating_point() and bool(torch.isnan(obj).any()):
            raise ValueError(f"{file}: NaN in tensor{where}")
    elif isinstance(obj, float):
        if math.isnan(obj):
            raise ValueError(f"{file}: NaN value{where}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_no_nan(v, file, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_no_nan(v, file, f"{where}[{i}]")


def _load_pt(path: Path) -> Any:
    obj = torch.load(_require(path), map_location="cpu", weights_only=True)
    _check_no_nan(obj, path)
    return obj


def _as_index(value: Any, file: Path, what: str, dim: int) -> Tensor:
    """``value`` as a LongTensor of ``dim`` dims with integral values, else ValueError."""
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{file}: {what} must hold integers, got dtype {tensor.dtype}")
    if tensor.is_floating_point() and bool((tensor != tensor.round()).any()):
        raise ValueError(f"{file}: {what} must hold integers, got non-integral floats")
    if tensor.numel() == 0:
        tensor = tensor.reshape([0] * dim if dim == 1 else [0, 2])
    if tensor.dim() != dim:
        raise ValueError(f"{file}: {what} must be {dim}-dimensional, got {list(tensor.shape)}")
    return tensor.long()


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from None


def _find_text_file(root: Path, name: str | None) -> Path:
    if name is not None:
        return _require(root / f"{name}-raw-text.jsonl")
    found = sorted(root.glob("*-raw-text.jsonl"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise FileNotFoundError(
            f"MM-GRAPH: required file <name>-raw-text.jsonl in {root}: found {what}; "
            "pass name= to choose"
        )
    return found[0]


def _read_texts(
    path: Path, index: dict[str, int], num_nodes: int, stats: ReadStats
) -> list[str | None]:
    texts: list[str | None] = [None] * num_nodes
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                asin, raw = item["asin"], item["raw_text"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{path}:{line_no}: expected {{'asin', 'raw_text'}} JSON, got error {err!r}"
                ) from None
            node = index.get(str(asin))
            if node is None:
                stats.skip("text_without_node")
                continue
            if raw is not None and str(raw).strip():
                texts[node] = str(raw).strip()
    return texts


def _edges_without_content(edges: Tensor, has_text: Tensor, has_image: Tensor) -> int:
    """Number of co-purchase pairs ``[E, 2]`` with an end that has neither text nor image."""
    empty = ~(has_text | has_image)
    return int((empty[edges[:, 0]] | empty[edges[:, 1]]).sum())


def _edge_index(edges: Tensor, has_text: Tensor, has_image: Tensor) -> tuple[Tensor, Tensor]:
    """Typed, undirected, deduplicated edges from co-purchase pairs ``[E, 2]``.

    TEXT_TEXT / IMAGE_IMAGE where both ends share that modality; every other pair (text-only
    to image-only, or an end with no content at all) becomes a TEXT_IMAGE edge, which only
    counts for reachability / hop distance, so no co-purchase pair is lost.
    """
    src, dst = edges[:, 0], edges[:, 1]
    both_text = has_text[src] & has_text[dst]
    both_image = has_image[src] & has_image[dst]
    cross = ~both_text & ~both_image
    parts = [
        (mask, etype)
        for mask, etype in (
            (both_text, EdgeType.TEXT_TEXT),
            (both_image, EdgeType.IMAGE_IMAGE),
            (cross, EdgeType.TEXT_IMAGE),
        )
    ]
    ei = torch.cat([torch.stack([src[m], dst[m]]) for m, _ in parts], dim=1)
    et = torch.cat([torch.full((int(m.sum()),), int(t), dtype=torch.long) for m, t in parts])
    ei = torch.cat([ei, ei.flip(0)], dim=1)
    et = torch.cat([et, et])
    # Deduplicate (src, dst, type) through one int64 key: 1-D unique is much faster than dim=1.
    n, k = int(has_text.numel()), len(EdgeType)
    key = torch.unique((ei[0] * n + ei[1]) * k + et)  # sorted by (src, dst, type)
    return torch.stack([key // (n * k), (key // k) % n]), key % k


def _log_edges_without_content(
    edges: Tensor, has_text: Tensor, has_image: Tensor, edges_file: Path
) -> None:
    """Log the co-purchase pairs touching a node with neither text nor image, which
    :func:`_edge_index` keeps for reachability only (nothing is dropped: no skip count)."""
    n = _edges_without_content(edges, has_text, has_image)
    if n == 0:
        return
    nodes = int((~(has_text | has_image)).sum())
    log.warning(
        "%s: %d of %d edges touch one of the %d nodes with neither text nor image; kept for "
        "reachability only (TEXT_IMAGE), those nodes join no modality subgraph",
        edges_file, n, edges.size(0), nodes,
    )  # fmt: skip


def read_mmgraph(
    root: str | os.PathLike[str],
    stats: ReadStats,
    name: str | None = None,
    *,
    image_workers: int = 8,
) -> SourceGraph:
    """Read an MM-GRAPH node-classification directory into one :class:`SourceGraph`.

    Targets: labeled nodes listed in ``split.pt``, ``prompt = "Product: <raw_text>.
    Category:"`` (a final "." of the raw text is not doubled), ``target_text`` = class name
    (or ``"class <id>"``), ``label`` = id. The raw layout reads ``"Product: "``, the
    product's text, its neighbours' texts nearest hop first, then ``" Category:"``.
    Counted in ``stats`` (unit = targets unless stated): every image check; skipped
    ``"zero_shot_heldout_train"`` (train nodes of a zero-shot class), ``"unlabeled"``
    (split nodes with label -1), ``"no_text"`` (split nodes without raw text),
    ``"text_without_node"`` (jsonl lines whose asin has no node; unit = lines). Edges with
    an end that has neither text nor a decodable image are kept as reachability-only
    TEXT_IMAGE edges (hop distances stay the co-purchase graph's) and logged.

    Args:
        root: the dataset directory.
        stats: counters to update.
        name: dataset name choosing ``<name>-raw-text.jsonl``; by default the single
            ``*-raw-text.jsonl`` in ``root``.
        image_workers: threads decoding images for the checks.

    Raises:
        FileNotFoundError: a required file is missing (named).
        ValueError: edges to unknown node ids (naming the file and edge row), NaN in a float
            tensor (naming the file), labels outside ``[-1, num classes)``, split indices out
            of range or in two splits, bad mapping / JSON lines.
    """
    root = Path(root)
    labels_file, edges_file = root / LABELS_FILE, root / EDGES_FILE
    split_file, mapping_file = root / SPLIT_FILE, root / MAPPING_FILE
    for path in (labels_file, edges_file, split_file, mapping_file):
        _require(path)
    text_file = _find_text_file(root, name)

    labels = _as_index(_load_pt(labels_file), labels_file, "labels", dim=1)
    num_nodes = labels.numel()
    class_names = (
        _load_json(root / "class_names.json") if (root / "class_names.json").is_file() else None
    )
    num_classes = len(class_names) if class_names is not None else None
    bad = labels < -1
    if num_classes is not None:
        bad |= labels >= num_classes
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        bound = f"[-1, {num_classes})" if num_classes is not None else ">= -1"
        raise ValueError(f"{labels_file}: label of node {i} is {int(labels[i])}, not in {bound}")
    zero_shot_file = root / "zero_shot_classes.json"
    zero_shot = [int(c) for c in _load_json(zero_shot_file)] if zero_shot_file.is_file() else None
    for c in zero_shot or ():
        if c < 0 or (num_classes is not None and c >= num_classes):
            raise ValueError(f"{zero_shot_file}: class {c} out of range [0, {num_classes})")

    edges = _as_index(_load_pt(edges_file), edges_file, "edges", dim=2)
    if edges.size(1) != 2:
        raise ValueError(f"{edges_file}: edges must have shape [E, 2], got {list(edges.shape)}")
    bad_rows = ((edges < 0) | (edges >= num_nodes)).any(dim=1).nonzero().view(-1)
    if bad_rows.numel() > 0:
        r = int(bad_rows[0])
        raise ValueError(
            f"{edges_file}: edge row {r} {edges[r].tolist()} refers to an unknown node id "
            f"(node ids are 0..{num_nodes - 1}, from {LABELS_FILE})"
        )

    mapping = _load_pt(mapping_file)
    if not isinstance(mapping, dict):
        raise ValueError(f"{mapping_file}: expected a dict asin -> node id")
    node_ids = [f"node{i}" for i in range(num_nodes)]
    index: dict[str, int] = {}
    for asin, node in mapping.items():
        node = int(node)
        if not 0 <= node < num_nodes:
            raise ValueError(f"{mapping_file}: asin {asin!r} -> node {node}, out of range")
        if node_ids[node] != f"node{node}":
            raise ValueError(f"{mapping_file}: node {node} mapped twice ({asin!r})")
        node_ids[node] = str(asin)
        index[str(asin)] = node
    if len(set(node_ids)) != num_nodes:
        raise ValueError(f"{mapping_file}: an asin collides with a generated id 'node<i>'")

    texts = _read_texts(text_file, index, num_nodes, stats)
    image_dir = (root / "images").resolve()
    image_paths = [image_dir / f"{asin}.jpg" for asin in node_ids]
    # an asin such as "../../x" must not reach outside images/
    statuses = check_images(image_paths, workers=image_workers, inside=[image_dir])
    images: list[str | None] = []
    for path, status in zip(image_paths, statuses, strict=True):
        stats.count_image(status)
        images.append(str(path) if status == "ok" else None)

    has_text = torch.tensor([t is not None for t in texts], dtype=torch.bool)
    has_image = torch.tensor([i is not None for i in images], dtype=torch.bool)
    edge_index, edge_type = _edge_index(edges, has_text, has_image)
    _log_edges_without_content(edges, has_text, has_image, edges_file)
    graph = MultimodalGraph(
        node_ids=node_ids,
        texts=texts,
        images=images,
        edge_index=edge_index,
        edge_type=edge_type,
        labels=labels,
        name=str(root),
    )
    targets = _targets(split_file, labels, texts, class_names, set(zero_shot or ()), stats)
    return SourceGraph(
        graph=graph,
        targets=targets,
        source=root.name,
        class_names=class_names,
        zero_shot_classes=zero_shot,
    )


def _targets(
    split_file: Path,
    labels: Tensor,
    texts: list[str | None],
    class_names: list[str] | None,
    zero_shot: set[int],
    stats: ReadStats,
) -> list[TargetSpec]:
    splits = _load_pt(split_file)
    if not isinstance(splits, dict):
        raise ValueError(f"{split_file}: expected a dict with keys {sorted(_SPLIT_KEYS.values())}")
    num_nodes = labels.numel()
    seen: dict[int, str] = {}
    targets: list[TargetSpec] = []
    for split, key in _SPLIT_KEYS.items():
        if key not in splits:
            raise ValueError(f"{split_file}: missing key {key!r}")
        idx = _as_index(splits[key], split_file, key, dim=1)
        for node in idx.tolist():
            if not 0 <= node < num_nodes:
                raise ValueError(f"{split_file}: {key} holds node {node}, out of range")
            if node in seen:
                raise ValueError(f"{split_file}: node {node} is in both {seen[node]} and {split}")
            seen[node] = split
            label = int(labels[node])
            if label < 0:
                stats.skip("unlabeled")
                continue
            if split == "train" and label in zero_shot:
                stats.skip("zero_shot_heldout_train")
                continue
            text = texts[node]
            if text is None:
                stats.skip("no_text")
                continue
            name = class_names[label] if class_names is not None else f"class {label}"
            targets.append(
                TargetSpec(
                    node=node,
                    split=split,
                    prompt=f"Product: {text.rstrip('.')}. Category:",
                    target_text=name,
                    label=label,
                    lead="Product: ",
                    cue=" Category:",
                )
            )
    return targets
