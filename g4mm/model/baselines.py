"""The paper's baselines, as adapters with the same contract as Graph4MM's.

Under the raw layout (``model.context: raw``, :mod:`g4mm.model.layout`) the LM reads the
subgraph's text itself, as MMGL's ``--neighbor_mode raw`` does, and the baselines differ in
what stands at the images' slots:

- ``mmgl_concat`` (MMGL, subgraph T&I): each image's frozen feature linearly mapped to k
  LM-width tokens, ``W_p F_P[j] -> (k, D_lm)``, no structure (:class:`ImageTokenAdapter`);
- ``mmgl_gnn`` (MMGL, T&I + GNN): the same tokens plus MMGL's own 2-layer GCN run over ONE
  joint graph of the subgraph's text and image nodes (text-text, image-image and image-owner
  edges), its output added to the node tokens, the token count unchanged
  (:class:`MMGLGNNAdapter`);
- ``text_only``: the raw text alone, no tokens (:class:`NoTokens`: nothing to train).

The frozen LM stays frozen for all of them (MMGL's own default fine-tunes its LM: these rows
are MMGL with a frozen LM, as the paper's comparison requires).

Under the pooled layout (``model.context: pooled``, an ablation where no neighbour text
reaches the LM as text) they are one projected token per node:

- ``mmgl_concat``: every node's frozen feature linearly projected to the LM width and the
  tokens concatenated, ``[W_t F_T ; W_p F_P]`` (:class:`ConcatAdapter`);
- ``mmgl_gnn``: the same tokens plus one token per node from a torch_geometric GNN (GCN or
  GAT) run over each modality subgraph (:class:`GNNConcatAdapter`);
- ``text_only``: the text-node tokens alone; images never reach the LM.

All return ``(tokens (B, S, D_lm), mask (B, S))``; padding nodes give masked tokens, and
their ``token_groups`` say which token belongs to which node.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import DenseSAGEConv
from torch_geometric.nn.models import GAT, GCN

from g4mm.graph.batch import dense_batch_to_edge_index
from g4mm.model.inputs import Graph4MMInputs, ModalityInputs
from g4mm.model.layout import TokenGroup

BASELINE_VARIANTS = ("mmgl_concat", "mmgl_gnn", "text_only")


class ConcatAdapter(nn.Module):
    """MMGL-style concatenation of per-node tokens (``mmgl_concat`` / ``text_only``)."""

    def __init__(self, text_dim: int, image_dim: int, lm_dim: int, use_images: bool = True):
        super().__init__()
        self.use_images = use_images
        self.text_proj = nn.Linear(text_dim, lm_dim)
        self.image_proj = nn.Linear(image_dim, lm_dim) if use_images else None
        self.token_groups: tuple[TokenGroup, ...] = (TokenGroup("text", "text", 1),)
        if use_images:
            self.token_groups += (TokenGroup("image", "image", 1),)

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
        self.token_groups += (
            TokenGroup("text_gnn", "text", 1),
            TokenGroup("image_gnn", "image", 1),
        )

    def forward(self, inputs: Graph4MMInputs) -> tuple[Tensor, Tensor]:
        tokens, mask = super().forward(inputs)
        graph_tokens = [self.text_gnn(inputs.text), self.image_gnn(inputs.image)]
        graph_masks = [inputs.text.mask, inputs.image.mask]
        return torch.cat([tokens, *graph_tokens], dim=1), torch.cat([mask, *graph_masks], dim=1)


class ImageTokenAdapter(nn.Module):
    """``mmgl_concat`` under the raw layout: k LM-width tokens per image, as MMGL maps a
    frozen CLIP pooled vector to its ``n_visual_tokens`` input embeddings.

    ``tokens[b, j] = reshape(W_p F_P[b, j], (k, D_lm))``; shapes: image feats (B, Np, F)
    -> tokens (B, Np k, D_lm), mask (B, Np k) (real where the image is).
    """

    def __init__(self, image_dim: int, lm_dim: int, tokens_per_image: int) -> None:
        super().__init__()
        self.k, self.lm_dim = tokens_per_image, lm_dim
        self.image_proj = nn.Linear(image_dim, tokens_per_image * lm_dim)
        self.token_groups = (TokenGroup("image", "image", tokens_per_image),)

    def image_tokens(self, inputs: Graph4MMInputs) -> Tensor:
        """(B, Np, k D_lm): each image's tokens, flattened per node."""
        return self.image_proj(inputs.image.feats)

    def _out(self, per_node: Tensor, inputs: Graph4MMInputs) -> tuple[Tensor, Tensor]:
        b, n, _ = per_node.shape
        tokens = per_node.reshape(b, n * self.k, self.lm_dim)  # (B, Np k, D_lm)
        return tokens, inputs.image.mask.repeat_interleave(self.k, dim=1)

    def forward(self, inputs: Graph4MMInputs) -> tuple[Tensor, Tensor]:
        return self._out(self.image_tokens(inputs), inputs)


def joint_adjacency(inputs: Graph4MMInputs) -> tuple[Tensor, Tensor]:
    """One graph over the text and image nodes of each sample: (adj (B, Nt+Np, Nt+Np) bool,
    attention convention, mask (B, Nt+Np)). Blocks: text-text = G_t's edges, image-image =
    G_p's, text-image both ways = ``cross_adj`` (an image and the text node it belongs to)."""
    text, image = inputs.text, inputs.image
    b, nt, npi = text.mask.shape[0], text.mask.shape[1], image.mask.shape[1]
    cross = inputs.cross_adj
    if cross is None:
        cross = image.mask.new_zeros(b, npi, nt)
    cross = cross.bool() & image.mask.bool()[:, :, None] & text.mask.bool()[:, None, :]
    top = torch.cat([text.adj.bool(), cross.transpose(1, 2)], dim=2)  # (B, Nt, Nt + Np)
    bottom = torch.cat([cross, image.adj.bool()], dim=2)  # (B, Np, Nt + Np)
    return torch.cat([top, bottom], dim=1), torch.cat([text.mask, image.mask], dim=1).bool()


class MMGLGNNAdapter(ImageTokenAdapter):
    r"""``mmgl_gnn`` under the raw layout: MMGL's ``position_type gnn`` on the image tokens.

    MMGL (``model/graph.py``) runs a 2-layer GCN in which each node is concatenated with the
    aggregate of its neighbours, over one joint graph of all neighbour tokens, and adds its
    output to them. Here, per sample, with X the nodes' flattened tokens (k D_lm wide; text
    nodes: ``W_t F_T``, images: ``W_p F_P``) and A the :func:`joint_adjacency`:

    .. math::
        H = \mathrm{SAGE}_2(\mathrm{ReLU}(\mathrm{SAGE}_1(X, A)), A),\quad
        \mathrm{SAGE}(X, A)_i = W_1 X_i + W_2 \operatorname{mean}_{j \in N(i)} X_j

    (``torch_geometric.nn.DenseSAGEConv``: the concatenation of a node with its neighbours'
    mean through one linear map), and the image slots get ``X + H`` of the image nodes; the
    text nodes take part as graph nodes only (the LM reads their text as text).

    Where it departs from MMGL, and why: MMGL puts these tokens after the input, which for a
    decoder-only LM is after the labels, so the causal LM never sees them (a bug, likely
    behind the paper's low MMGL + GNN row); here they stand at the images' slots like
    ``mmgl_concat``'s. MMGL's graph normalisation (``utils.normalize_graph``) is not in its
    repository; the mean over neighbours is used. Its zero "null root" node is the target's
    own text node here.

    Shapes: as :class:`ImageTokenAdapter`.
    """

    def __init__(
        self, text_dim: int, image_dim: int, lm_dim: int, tokens_per_image: int,
        hidden_dim: int = 256,
    ) -> None:  # fmt: skip
        super().__init__(image_dim, lm_dim, tokens_per_image)
        width = tokens_per_image * lm_dim
        self.text_proj = nn.Linear(text_dim, width)
        self.gcn = nn.ModuleList(
            [DenseSAGEConv(width, hidden_dim), DenseSAGEConv(hidden_dim, width)]
        )

    def forward(self, inputs: Graph4MMInputs) -> tuple[Tensor, Tensor]:
        x = torch.cat([self.text_proj(inputs.text.feats), self.image_tokens(inputs)], dim=1)
        adj, mask = joint_adjacency(inputs)  # (B, N, N), (B, N) with N = Nt + Np
        adj = adj.to(x.dtype)
        h = torch.relu(self.gcn[0](x, adj, mask))
        h = self.gcn[1](h, adj, mask)
        nt = inputs.text.feats.shape[1]
        return self._out((x + h)[:, nt:], inputs)


class NoTokens(nn.Module):
    """``text_only`` under the raw layout: the LM reads the raw text alone; no soft token and
    no parameter (the run evaluates the frozen LM). Returns (B, 0, D_lm) tokens."""

    token_groups: tuple[TokenGroup, ...] = ()

    def __init__(self, lm_dim: int) -> None:
        super().__init__()
        self.lm_dim = lm_dim

    def forward(self, inputs: Graph4MMInputs) -> tuple[Tensor, Tensor]:
        feats = inputs.text.feats
        return feats.new_zeros(feats.shape[0], 0, self.lm_dim), inputs.text.mask[:, :0]
