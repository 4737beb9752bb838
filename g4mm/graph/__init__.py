"""Multimodal graph and tau-hop, per-modality subgraph extraction (Ray-free).

- :mod:`~g4mm.graph.multimodal_graph`: :class:`MultimodalGraph` (nodes with text and/or image
  reference, typed edges :class:`EdgeType`), validation, PyG conversion, cached CSR.
- :mod:`~g4mm.graph.subgraph`: BFS hop distances and the text / visual subgraphs G_t, G_p.
- :mod:`~g4mm.graph.batch`: dense padded batches in the attention convention and back.
"""

from g4mm.graph.batch import (
    DenseSubgraphBatch,
    dense_batch_to_edge_index,
    edge_index_to_attention_adj,
    pad_subgraphs,
)
from g4mm.graph.multimodal_graph import EdgeType, MultimodalGraph
from g4mm.graph.subgraph import (
    ModalitySubgraph,
    TargetSubgraphs,
    extract_subgraphs,
    hop_distances,
)

__all__ = [
    "DenseSubgraphBatch",
    "EdgeType",
    "ModalitySubgraph",
    "MultimodalGraph",
    "TargetSubgraphs",
    "dense_batch_to_edge_index",
    "edge_index_to_attention_adj",
    "extract_subgraphs",
    "hop_distances",
    "pad_subgraphs",
]
