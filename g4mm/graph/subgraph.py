"""Tau-hop, per-modality subgraphs around a target node (the paper's G_t and G_p).

For a target node ``v`` and a radius ``tau``:

- hop(u) = BFS distance from ``v`` to ``u`` over the whole graph, all edge types, undirected;
- the text subgraph G_t keeps the nodes with ``hop(u) <= tau`` that carry text, nearest hop
  first (ties by global index), at most ``max_text_nodes`` of them, joined by the TEXT_TEXT
  edges among them;
- the visual subgraph G_p likewise with the nodes that carry an image and IMAGE_IMAGE edges.

TEXT_IMAGE edges only count for reachability / hop distance: they never appear in G_t or G_p.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.utils import sort_edge_index, subgraph

from g4mm.graph.multimodal_graph import EdgeType, MultimodalGraph

__all__ = ["ModalitySubgraph", "TargetSubgraphs", "extract_subgraphs", "hop_distances"]


@dataclass(eq=False)
class ModalitySubgraph:
    """One modality's subgraph around a target node.

    Args:
        node_index: ``LongTensor [n]`` global node indices, ordered by ``(hop, index)``
            ascending, so the target comes first when it carries this modality.
        edge_index: ``LongTensor [2, e]`` LOCAL indices into ``node_index``, PyG
            source -> target convention.
        hops: ``LongTensor [n]`` BFS hop distance of each node to the target over the whole
            graph (all edge types).
    """

    node_index: Tensor
    edge_index: Tensor
    hops: Tensor

    @property
    def num_nodes(self) -> int:
        """Number of nodes ``n``."""
        return self.node_index.numel()

    @property
    def num_edges(self) -> int:
        """Number of directed edges ``e``."""
        return self.edge_index.size(1)


@dataclass(eq=False)
class TargetSubgraphs:
    """The text subgraph G_t and the visual subgraph G_p of one target node."""

    target: int
    text: ModalitySubgraph
    image: ModalitySubgraph


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high)``; ValueError naming ``name`` otherwise."""
    try:
        if isinstance(value, bool):
            raise TypeError
        out = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    if out < low or (high is not None and out >= high):
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"{name} must be {bound}, got {out}")
    return out


def _gather_rows(rowptr: Tensor, col: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate the CSR rows ``rows``: cost proportional to their total length.

    Returns:
        ``(src [m], dst [m])``: ``src`` repeats each row id once per entry, ``dst`` holds the
        row's column entries, rows in the order given.
    """
    start = rowptr[rows]
    count = rowptr[rows + 1] - start
    # Position k of block r reads col[start_r + (k - first_k_of_block_r)].
    shift = torch.repeat_interleave(start - (count.cumsum(0) - count), count)
    idx = torch.arange(shift.numel(), dtype=torch.long) + shift
    return torch.repeat_interleave(rows, count), col[idx]


def hop_distances(graph: MultimodalGraph, target: int, tau: int) -> tuple[Tensor, Tensor]:
    """BFS hop distances from ``target``, up to ``tau``, over all edge types (undirected).

    Frontier expansion on the graph's cached CSR (:meth:`MultimodalGraph.csr`): each hop
    gathers the frontier's neighbour lists and drops visited nodes, so the cost grows with the
    size of the tau-hop neighbourhood, never with ``|E|`` or ``|V|``.

    Args:
        graph: the graph.
        target: global index of the target node, in ``[0, N)``.
        tau: maximal hop distance (``0`` returns the target alone).

    Returns:
        ``(nodes [n], hops [n])``: the nodes within ``tau`` hops and their distances, sorted
        by ``(hop, index)`` ascending (so ``nodes[0] == target``, ``hops[0] == 0``).

    Raises:
        ValueError: if ``tau < 0`` or ``target`` is out of range.
    """
    target = _check_int("target", target, 0, graph.num_nodes)
    tau = _check_int("tau", tau, 0)
    rowptr, col = graph.csr()
    frontier = torch.tensor([target], dtype=torch.long)
    visited = frontier
    nodes, hops = [frontier], [torch.zeros(1, dtype=torch.long)]
    for hop in range(1, tau + 1):
        _, neighbours = _gather_rows(rowptr, col, frontier)
        neighbours = torch.unique(neighbours)  # sorted -> (hop, index) order within a hop
        frontier = neighbours[~torch.isin(neighbours, visited)]
        if frontier.numel() == 0:
            break
        visited = torch.cat([visited, frontier])
        nodes.append(frontier)
        hops.append(torch.full_like(frontier, hop))
    return torch.cat(nodes), torch.cat(hops)


def _modality_subgraph(
    graph: MultimodalGraph,
    nodes: Tensor,
    hops: Tensor,
    has_modality: Tensor,
    edge_type: EdgeType,
    cap: int,
) -> ModalitySubgraph:
    """Keep the first ``cap`` of ``nodes`` (sorted by (hop, index)) that carry the modality,
    joined by the ``edge_type`` edges among them (local indices)."""
    keep = has_modality[nodes]
    node_index, node_hops = nodes[keep][:cap], hops[keep][:cap]
    # Candidate edges: the typed out-edges of the kept nodes (cost ~ their degree, not |E|);
    # `subgraph` keeps those whose target is kept too and relabels into node_index order.
    rowptr, col = graph.csr(edge_type)
    src, dst = _gather_rows(rowptr, col, node_index)
    edge_index, _ = subgraph(
        node_index,
        torch.stack([src, dst]),
        relabel_nodes=True,
        num_nodes=graph.num_nodes,
    )
    edge_index = sort_edge_index(edge_index, num_nodes=node_index.numel())
    return ModalitySubgraph(node_index=node_index, edge_index=edge_index, hops=node_hops)


def extract_subgraphs(
    graph: MultimodalGraph,
    target: int,
    tau: int,
    max_text_nodes: int,
    max_image_nodes: int,
) -> TargetSubgraphs:
    """The text subgraph G_t and the visual subgraph G_p of ``target``.

    G_t: nodes within ``tau`` hops (all edge types) that have text, at most
    ``max_text_nodes`` of them, nearest hop first, ties broken by global index; edges: the
    TEXT_TEXT edges among them. G_p: likewise with ``has_image`` and IMAGE_IMAGE edges.
    Deterministic: the same call always returns the same tensors.

    Args:
        graph: the graph.
        target: global index of the target node, in ``[0, N)``.
        tau: maximal hop distance, ``>= 0``.
        max_text_nodes: cap on ``|V(G_t)|``, ``>= 1``.
        max_image_nodes: cap on ``|V(G_p)|``, ``>= 1``.

    Returns:
        :class:`TargetSubgraphs` with both :class:`ModalitySubgraph` (sizes ``n_t``, ``n_p``).

    Raises:
        ValueError: for a target out of range, ``tau < 0`` or a cap ``< 1``.
    """
    target = _check_int("target", target, 0, graph.num_nodes)
    max_text_nodes = _check_int("max_text_nodes", max_text_nodes, 1)
    max_image_nodes = _check_int("max_image_nodes", max_image_nodes, 1)
    nodes, hops = hop_distances(graph, target, tau)
    return TargetSubgraphs(
        target=target,
        text=_modality_subgraph(
            graph, nodes, hops, graph.has_text, EdgeType.TEXT_TEXT, max_text_nodes
        ),
        image=_modality_subgraph(
            graph, nodes, hops, graph.has_image, EdgeType.IMAGE_IMAGE, max_image_nodes
        ),
    )
