"""The paper's baselines, as adapters with the same contract as Graph4MM's.

- ``mmgl_concat``: MMGL with the subgraph's texts and images as tokens, no structure:
  every node's frozen feature is linearly projected to the LM width and the tokens are
  concatenated (nodes ordered by hop, target first), ``[W_t F_T ; W_p F_P]``.
- ``mmgl_gnn``: MMGL with the graph as an *extra modality*: the same tokens plus one token per
  node from a torch_geometric GNN (GCN or GAT) run over each modality subgraph.
- ``text_only``: the text-node tokens alone; images never reach the LM.

All return ``(tokens (B, S, D_lm), mask (B, S))``; padding nodes give masked tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn.models import GAT, GCN

from g4mm.graph.batch import dense_batch_to_edge_index
from g4mm.model.inputs import Graph4MMInputs, ModalityInputs

BASELINE_VARIANTS = ("mmgl_concat", "mmgl_gnn", "text_only")


class ConcatAdapter(nn.Module):
    """MMGL-style concatenation of per-node tokens (``mmgl_concat`` / ``text_only``)."""

    def __init__(self, text_dim: int, image_dim: int, lm_dim: int, use_images: bool = True):
        super().__init__()
        self.use_images = use_images
        self.text_proj = nn.Linear(text_dim, lm_dim)
        self.image_proj = nn.Linear(image_dim, lm_dim) if use_images else None

    def forward(self, inputs: Graph4MMInputs) -> tuple[Tensor, Tensor]:
        tokens, masks = [self.text_proj(inputs.text.feats)], [inputs.text.mask]
        if self.image_proj is not None:
            tokens.append(self.image_proj(inputs.image.feats))
            masks.append(inputs.image.mask)
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)


class GraphModalityEncoder(nn.Module):
    """A PyG GNN over one modality's subgraphs, one output token per node.

    Shapes: feats (B, N, F) with mask/adj from :class:`ModalityInputs` -> (B, N, D_lm).
    """

    def __init__(self, in_dim: int, hidden_dim: int, lm_dim: int, gnn_type: str, num_layers: int):
        super().__init__()
        if gnn_type not in ("gcn", "gat"):
            raise ValueError(f"gnn_type = {gnn_type!r}: expected gcn|gat")
        self.proj = nn.Linear(in_dim, hidden_dim)
        gnn_cls = GCN if gnn_type == "gcn" else GAT
        self.gnn = gnn_cls(hidden_dim, hidden_dim, num_layers=num_layers, out_channels=hidden_dim)
        self.to_lm = nn.Linear(hidden_dim, lm_dim)

    def forward(self, graph: ModalityInputs) -> Tensor:
        x = self.proj(graph.feats)  # (B, N, h)
        edge_index, _ = dense_batch_to_edge_index(graph.adj, graph.mask)
        out = x.new_zeros(x.shape)
        out[graph.mask] = self.gnn(x[graph.mask], edge_index)
        return self.to_lm(out)


class GNNConcatAdapter(ConcatAdapter):
    """``mmgl_gnn``: concatenated node tokens plus GNN graph tokens for each modality."""

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        lm_dim: int,
        hidden_dim: int = 256,
        gnn_type: str = "gcn",
        gnn_layers: int = 2,
    ) -> None:
        super().__init__(text_dim, image_dim, lm_dim, use_images=True)
        self.text_gnn = GraphModalityEncoder(text_dim, hidden_dim, lm_dim, gnn_type, gnn_layers)
        self.image_gnn = GraphModalityEncoder(image_dim, hidden_dim, lm_dim, gnn_type, gnn_layers)

    def forward(self, inputs: Graph4MMInputs) -> tuple[Tensor, Tensor]:
        tokens, mask = super().forward(inputs)
        graph_tokens = [self.text_gnn(inputs.text), self.image_gnn(inputs.image)]
        graph_masks = [inputs.text.mask, inputs.image.mask]
        return torch.cat([tokens, *graph_tokens], dim=1), torch.cat([mask, *graph_masks], dim=1)
