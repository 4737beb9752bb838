"""One :data:`~g4mm.data.schema.SAMPLE_SCHEMA` row per target node of a :class:`SourceGraph`.

For each :class:`~g4mm.data.records.TargetSpec` the tau-hop text subgraph G_t and image
subgraph G_p are cut with :func:`g4mm.graph.extract_subgraphs` (the nearest hops kept under the
caps), then the kept nodes are put in a seeded random order, the target's own node first when it
carries the modality, edges remapped to the new LOCAL indices. Hop-sorted order would hand the
hop of every node to a structure-blind baseline through its position (mmgl_concat feeds node
tokens to the LM in order), so position carries nothing here; structure lives only in the edges
(and the hop lists, which only hop-aware variants read). The order depends only on the sample
id and ``data.seed``. The target's own text is replaced by ``TargetSpec.node_text`` when set
(leak prevention).

What the raw layout reads (:mod:`g4mm.model.layout`) is stored beside the nodes: each text
node's segment (the target's is ``TargetSpec.segment``: its summary removed), its reading
order key (the node index where the source has a document order, else its rank nearest hop
first, then by index), each image's caption and owner (the local text node that is the
image's own node or its TEXT_IMAGE neighbour, the earliest read; -1 if none is in G_t), and
the target's ``lead`` / ``cue``.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch

from g4mm.config import DataConfig
from g4mm.data.records import ReadStats, SourceGraph, TargetSpec
from g4mm.graph import EdgeType, ModalitySubgraph, MultimodalGraph, extract_subgraphs

__all__ = ["build_samples", "sample_id"]


def sample_id(src: SourceGraph, node: int) -> str:
    """``"<source>#<node external id>"``."""
    return f"{src.source}#{src.graph.node_ids[node]}"


def _shuffled(
    sub: ModalitySubgraph, keep_first: bool, rng: np.random.Generator
) -> tuple[ModalitySubgraph, list[int]]:
    """``sub`` with its nodes in random order (node 0 stays first when ``keep_first``), and
    ``order`` (``order[new] = old``: each node's rank in ``sub``'s (hop, index) order); edges
    are relabelled with the inverse permutation."""
    n = sub.num_nodes
    head = 1 if keep_first and n > 0 else 0
    order = torch.from_numpy(np.concatenate([np.arange(head), head + rng.permutation(n - head)]))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)
    shuffled = ModalitySubgraph(sub.node_index[order], inverse[sub.edge_index], sub.hops[order])
    return shuffled, order.tolist()


def _image_owners(
    graph: MultimodalGraph, image_index: list[int], text_index: list[int], text_order: list[int]
) -> list[int]:
    """Per image node, the local index of its owner in G_t: the node itself when it also
    carries text, else its TEXT_IMAGE neighbour read first (smallest ``text_order``); -1 when
    neither is in G_t."""
    local = {g: i for i, g in enumerate(text_index)}
    rowptr, col = graph.csr(EdgeType.TEXT_IMAGE)
    owners = []
    for g in image_index:
        if g in local:
            owners.append(local[g])
            continue
        linked = [local[int(c)] for c in col[rowptr[g] : rowptr[g + 1]].tolist() if c in local]
        owners.append(min(linked, key=lambda i: text_order[i]) if linked else -1)
    return owners


def _edges(sub: ModalitySubgraph) -> tuple[list[int], list[int]]:
    return sub.edge_index[0].tolist(), sub.edge_index[1].tolist()


def _row(src: SourceGraph, target: TargetSpec, cfg: DataConfig) -> dict[str, Any]:
    graph = src.graph
    # extract_subgraphs needs a cap >= 1; max_image_nodes == 0 means "no images" here.
    subs = extract_subgraphs(
        graph, target.node, cfg.tau, cfg.max_text_nodes, max(1, cfg.max_image_nodes)
    )
    rng = np.random.default_rng([cfg.seed, zlib.crc32(sample_id(src, target.node).encode())])
    own_text = subs.text.num_nodes > 0 and int(subs.text.node_index[0]) == target.node
    text_sub, text_rank = _shuffled(subs.text, keep_first=own_text, rng=rng)
    image_sub, _ = _shuffled(subs.image, keep_first=False, rng=rng)
    text_index = text_sub.node_index.tolist()
    text_nodes = [graph.texts[i] or "" for i in text_index]
    segments = src.segments or graph.texts
    text_segments = [segments[i] or "" for i in text_index]
    if own_text:
        if target.node_text is not None:
            text_nodes[0] = target.node_text
        if target.segment is not None:
            text_segments[0] = target.segment
    text_order = text_index if src.document_order else text_rank
    text_src, text_dst = _edges(text_sub)
    if cfg.max_image_nodes > 0:
        image_index = image_sub.node_index.tolist()
        image_paths = [graph.images[i] or "" for i in image_index]
        image_hops = image_sub.hops.tolist()
        image_src, image_dst = _edges(image_sub)
        captions = src.captions or [None] * graph.num_nodes
        image_captions = [captions[i] or "" for i in image_index]
        image_owner = _image_owners(graph, image_index, text_index, text_order)
    else:
        image_paths, image_hops, image_src, image_dst = [], [], [], []
        image_captions, image_owner = [], []
    zero_shot = bool(
        target.label is not None
        and src.zero_shot_classes is not None
        and target.label in src.zero_shot_classes
    )
    return {
        "sample_id": sample_id(src, target.node),
        "split": target.split,
        "prompt": target.prompt,
        "target_text": target.target_text,
        "label": target.label,
        "zero_shot": zero_shot,
        "text_nodes": text_nodes,
        "text_hops": text_sub.hops.tolist(),
        "text_edge_src": text_src,
        "text_edge_dst": text_dst,
        "image_paths": image_paths,
        "image_hops": image_hops,
        "image_edge_src": image_src,
        "image_edge_dst": image_dst,
        "lead": target.lead,
        "cue": target.cue,
        "text_segments": text_segments,
        "text_order": text_order,
        "image_captions": image_captions,
        "image_owner": image_owner,
    }


def build_samples(
    src: SourceGraph, cfg: DataConfig, stats: ReadStats | None = None
) -> list[dict[str, Any]]:
    """The sample rows of every target of ``src`` (``pa.Table.from_pylist(rows,
    schema=SAMPLE_SCHEMA)`` accepts them).

    Skipped (counted in ``stats.skipped`` when given, unit = targets):
    ``"empty_text"`` when the prompt is blank and the text subgraph is empty;
    ``"zero_shot_heldout_train"`` for a train target whose label is a zero-shot class (the
    readers already drop these; this is a safety net).

    Args:
        src: the source graph and its targets.
        cfg: ``tau``, ``max_text_nodes``, ``max_image_nodes`` (0 = no image subgraph).
        stats: counters to update, or ``None``.
    """
    stats = stats if stats is not None else ReadStats()
    zero_shot = set(src.zero_shot_classes or ())
    rows = []
    for target in src.targets:
        if target.split == "train" and target.label is not None and target.label in zero_shot:
            stats.skip("zero_shot_heldout_train")
            continue
        row = _row(src, target, cfg)
        if not target.prompt.strip() and not any(t.strip() for t in row["text_nodes"]):
            stats.skip("empty_text")
            continue
        rows.append(row)
    return rows
