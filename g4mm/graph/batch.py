"""Dense padded batches of modality subgraphs, in the attention convention of the model.

PyG stores an edge ``j -> i`` as ``edge_index[:, k] = (j, i)`` (source, target) and
:func:`torch_geometric.utils.to_dense_adj` puts it at ``A[j, i]``. Attention reads rows as
receivers: ``adj[i, j]`` is True iff node ``i`` attends to (receives from) node ``j``. So the
attention adjacency is the TRANSPOSE of ``to_dense_adj``:

    adj[b, i, j] = True  <=>  edge (j -> i) in subgraph b.

Self-loops are not added here; the attention layer adds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.utils import dense_to_sparse, to_dense_adj, to_dense_batch

from g4mm.graph.subgraph import ModalitySubgraph

__all__ = [
    "DenseSubgraphBatch",
    "dense_batch_to_edge_index",
    "edge_index_to_attention_adj",
    "pad_subgraphs",
]


@dataclass(eq=False)
class DenseSubgraphBatch:
    """``B`` modality subgraphs padded to ``N`` nodes each (real nodes first in every row).

    Args:
        node_index: ``LongTensor [B, N]`` global node index, ``-1`` at padding.
        mask: ``BoolTensor [B, N]``, True at real nodes.
        adj: ``BoolTensor [B, N, N]``, ``adj[b, i, j]`` True iff edge ``(j -> i)`` (node ``i``
            receives from node ``j``); False on every padding row and column; no self-loops
            added.
        hops: ``LongTensor [B, N]`` hop distance to the target, ``0`` at padding.
    """

    node_index: Tensor
    mask: Tensor
    adj: Tensor
    hops: Tensor

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self.mask.size(0)

    @property
    def max_nodes(self) -> int:
        """``N``."""
        return self.mask.size(1)


def _check_local_edges(edge_index: Tensor, num_nodes: int, what: str) -> None:
    """ValueError unless ``edge_index`` is ``[2, e]`` with entries in ``[0, num_nodes)``."""
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{what}: edge_index must have shape [2, e], got {list(edge_index.shape)}")
    bad = (edge_index < 0) | (edge_index >= num_nodes)
    if bool(bad.any()):
        value = int(edge_index[bad][0])
        raise ValueError(f"{what}: edge_index entry {value} out of range [0, {num_nodes})")


def edge_index_to_attention_adj(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Dense attention adjacency of one graph: ``to_dense_adj(edge_index)`` transposed.

    Args:
        edge_index: ``LongTensor [2, E]``, PyG source -> target.
        num_nodes: ``N``.

    Returns:
        ``BoolTensor [N, N]`` with ``adj[i, j]`` True iff there is an edge ``(j -> i)``.
    """
    if num_nodes < 0:
        raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
    _check_local_edges(edge_index, num_nodes, "edge_index_to_attention_adj")
    if num_nodes == 0:
        return torch.zeros(0, 0, dtype=torch.bool)
    dense = to_dense_adj(edge_index, max_num_nodes=num_nodes)[0]  # [N, N], dense[src, dst]
    return (dense > 0).t()  # [N, N], adj[dst, src]


def pad_subgraphs(
    subgraphs: Sequence[ModalitySubgraph], max_nodes: int | None = None
) -> DenseSubgraphBatch:
    """Pad ``B`` subgraphs into a :class:`DenseSubgraphBatch` of width ``N``.

    ``N = max_nodes`` if given, else the largest ``n`` (at least 1, even if all are empty).
    Row ``b`` holds subgraph ``b``'s nodes in their order at columns ``0 .. n_b - 1``.

    Raises:
        ValueError: if a subgraph has more than ``max_nodes`` nodes, ``max_nodes < 1``, or a
            subgraph's local ``edge_index`` points outside its nodes.
    """
    sizes = [sg.num_nodes for sg in subgraphs]
    if max_nodes is None:
        width = max(max(sizes, default=0), 1)
    else:
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
        for b, n in enumerate(sizes):
            if n > max_nodes:
                raise ValueError(f"subgraph {b} has {n} nodes, more than max_nodes={max_nodes}")
        width = max_nodes
    for b, sg in enumerate(subgraphs):
        if sg.hops.numel() != sg.num_nodes:
            raise ValueError(
                f"subgraph {b}: hops has {sg.hops.numel()} entries, node_index {sg.num_nodes}"
            )
        _check_local_edges(sg.edge_index, sg.num_nodes, f"subgraph {b}")

    num_graphs = len(subgraphs)
    counts = torch.tensor(sizes, dtype=torch.long)
    batch = torch.arange(num_graphs).repeat_interleave(counts)  # [n_total]
    offsets = counts.cumsum(0) - counts  # [B], first flat node of each subgraph
    empty = torch.zeros(0, dtype=torch.long)
    node_index = torch.cat([empty, *(sg.node_index.long() for sg in subgraphs)])  # [n_total]
    hops = torch.cat([empty, *(sg.hops.long() for sg in subgraphs)])  # [n_total]
    edge_index = torch.cat(
        [empty.view(2, 0), *(sg.edge_index.long() + offsets[b] for b, sg in enumerate(subgraphs))],
        dim=1,
    )  # [2, e_total], flat node ids

    x = torch.stack([node_index, hops], dim=-1)  # [n_total, 2]
    dense_x, mask = to_dense_batch(x, batch, max_num_nodes=width, batch_size=num_graphs)
    dense_adj = to_dense_adj(edge_index, batch, max_num_nodes=width, batch_size=num_graphs)
    return DenseSubgraphBatch(
        node_index=dense_x[..., 0].masked_fill(~mask, -1),  # [B, N]
        mask=mask,  # [B, N]
        adj=(dense_adj > 0).transpose(1, 2),  # [B, N, N], adj[b, dst, src]
        hops=dense_x[..., 1],  # [B, N], 0 at padding
    )


def dense_batch_to_edge_index(adj: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`pad_subgraphs`' adjacency: a sparse disjoint union of the subgraphs.

    Real nodes (``mask`` True) are numbered in row-major order over ``(b, i)``; an attention
    entry ``adj[b, i, j]`` becomes the edge ``(j -> i)`` (source -> target), so a PyG layer run
    on the union computes what the dense layer computes on the batch. Any mask is accepted
    (real nodes need not come first).

    Args:
        adj: ``BoolTensor [B, N, N]``, attention convention, False wherever ``i`` or ``j`` is
            padding.
        mask: ``BoolTensor [B, N]``.

    Returns:
        ``(edge_index [2, E], batch [n_real])``, edges sorted by (target, source).

    Raises:
        ValueError: on shape mismatch or an edge touching a padding slot.
    """
    if adj.dim() != 3 or mask.dim() != 2 or adj.shape != (*mask.shape, mask.size(1)):
        raise ValueError(
            f"adj must be [B, N, N] and mask [B, N], got {list(adj.shape)} and {list(mask.shape)}"
        )
    mask = mask.bool()
    adj = adj.bool().contiguous()  # dense_to_sparse views it as [B*N, N]
    pair_mask = mask[:, :, None] & mask[:, None, :]  # [B, N, N]
    if bool((adj & ~pair_mask).any()):
        b, i, j = (int(v) for v in (adj & ~pair_mask).nonzero()[0])
        raise ValueError(f"adj[{b}, {i}, {j}] is True but touches a padding slot (mask is False)")
    num_graphs, width = mask.shape
    batch = torch.arange(num_graphs, device=mask.device).repeat_interleave(mask.sum(1))
    if width == 0 or num_graphs == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=mask.device), batch
    slots, _ = dense_to_sparse(adj)  # [2, E], slot ids b*N + i -> b*N + j, row-major
    slot_to_node = mask.flatten().long().cumsum(0) - 1  # [B*N], rank among real slots
    edge_index = slot_to_node[slots.flip(0)]  # [2, E], (j -> i) in real-node ids
    return edge_index, batch
