"""One :data:`~g4mm.data.schema.SAMPLE_SCHEMA` row per target node of a :class:`SourceGraph`.

For each :class:`~g4mm.data.records.TargetSpec` the tau-hop text subgraph G_t and image
subgraph G_p are cut with :func:`g4mm.graph.extract_subgraphs` (nodes ordered by hop then
global index, so the target comes first when it carries the modality; edges in LOCAL indices).
The target's own text is replaced by ``TargetSpec.node_text`` when set (leak prevention).
"""

from __future__ import annotations

from typing import Any

from g4mm.config import DataConfig
from g4mm.data.records import ReadStats, SourceGraph, TargetSpec
from g4mm.graph import ModalitySubgraph, extract_subgraphs

__all__ = ["build_samples", "sample_id"]


def sample_id(src: SourceGraph, node: int) -> str:
    """``"<source>#<node external id>"``."""
    return f"{src.source}#{src.graph.node_ids[node]}"


def _edges(sub: ModalitySubgraph) -> tuple[list[int], list[int]]:
    return sub.edge_index[0].tolist(), sub.edge_index[1].tolist()


def _row(src: SourceGraph, target: TargetSpec, cfg: DataConfig) -> dict[str, Any]:
    graph = src.graph
    # extract_subgraphs needs a cap >= 1; max_image_nodes == 0 means "no images" here.
    subs = extract_subgraphs(
        graph, target.node, cfg.tau, cfg.max_text_nodes, max(1, cfg.max_image_nodes)
    )
    text_index = subs.text.node_index.tolist()
    text_nodes = [graph.texts[i] or "" for i in text_index]
    if target.node_text is not None and text_index and text_index[0] == target.node:
        text_nodes[0] = target.node_text
    text_src, text_dst = _edges(subs.text)
    if cfg.max_image_nodes > 0:
        image_paths = [graph.images[i] or "" for i in subs.image.node_index.tolist()]
        image_hops = subs.image.hops.tolist()
        image_src, image_dst = _edges(subs.image)
    else:
        image_paths, image_hops, image_src, image_dst = [], [], [], []
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
        "text_hops": subs.text.hops.tolist(),
        "text_edge_src": text_src,
        "text_edge_dst": text_dst,
        "image_paths": image_paths,
        "image_hops": image_hops,
        "image_edge_src": image_src,
        "image_edge_dst": image_dst,
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
