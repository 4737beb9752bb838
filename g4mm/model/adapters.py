"""Trainable adapters that turn a batch of multimodal subgraphs into LM soft tokens.

Graph4MM (hop_diffused, hop_aware, no_text_structure, no_image_structure):

    H_T = W_t F_T,  H_P = W_p F_P                      project frozen features to width d
    H_T <- Struct_T(H_T, G_t),  H_P <- Struct_P(H_P, G_p)  hop-diffused / hop-aware / identity
    Q   = MMQFormer(H_T, H_P)                          (B, Nq, d)
    tokens = W_lm Q                                    (B, Nq, D_lm)

Where the tokens go is the layout's business (:mod:`g4mm.model.layout`); the adapter declares
its tokens as :class:`~g4mm.model.layout.TokenGroup` s:

- ``after_text`` / ``pooled``: Nq = ``num_query_tokens`` learnt queries, one run after the
  text (the paper's wording: "inserted after the text attribute tokens");
- ``at_images``: k = ``tokens_per_image`` queries per image node, image j's seeded with its
  own structure-encoded embedding, ``Q_{j,r} = q_r + W_q H_P[j]`` (B, Np k, d), so the k
  tokens written at image j's slot are that image's MM-QFormer tokens. The official code gets
  its 5 x 4 per-image tokens by cutting 20 shared queries into groups of 4 by position; here a
  group is tied to its image, which also lets the image count vary. Queries of absent images
  are masked (never attended to, never placed).

The MMGL baselines live in :mod:`g4mm.model.baselines`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import dense_to_sparse

from g4mm.config import GRAPH4MM_VARIANTS
from g4mm.model.hop_attention import HopAwareAttention, HopDiffusedAttention
from g4mm.model.inputs import Graph4MMInputs, ModalityInputs
from g4mm.model.layout import TokenGroup
from g4mm.model.qformer import MMQFormer

__all__ = ["GRAPH4MM_VARIANTS", "Graph4MMAdapter", "StructureEncoder"]


class StructureEncoder(nn.Module):
    """Applies one modality's structure prior to its projected node embeddings.

    ``kind``: ``hop_diffused`` (:class:`HopDiffusedAttention`, dense or sparse path),
    ``hop_aware`` (:class:`HopAwareAttention`) or ``none`` (identity: structure ablated).

    Shapes: x (B, N, d) with a :class:`ModalityInputs` for mask/adj/hops -> (B, N, d).
    """

    def __init__(
        self,
        kind: str,
        dim: int,
        num_heads: int,
        alpha: float,
        num_hops: int,
        max_hop: int,
        dropout: float = 0.0,
        impl: str = "dense",
    ) -> None:
        super().__init__()
        if kind not in ("hop_diffused", "hop_aware", "none"):
            raise ValueError(f"structure kind = {kind!r}: expected hop_diffused|hop_aware|none")
        if impl not in ("dense", "sparse"):
            raise ValueError(f"diffusion impl = {impl!r}: expected dense|sparse")
        self.kind, self.impl = kind, impl
        self.layer: nn.Module | None = None
        if kind == "hop_diffused":
            self.layer = HopDiffusedAttention(dim, num_heads, alpha, num_hops, dropout)
        elif kind == "hop_aware":
            self.layer = HopAwareAttention(dim, max_hop)

    def forward(self, x: Tensor, graph: ModalityInputs) -> Tensor:
        mask = graph.mask
        if self.layer is None:
            return x * mask[..., None].to(x.dtype)
        if self.kind == "hop_aware":
            return self.layer(x, graph.hops, mask)
        if self.impl == "dense":
            return self.layer(x, graph.adj, mask)
        # every slot of the batch is a node of one disjoint union (padding slots get no edges
        # and are zeroed below): no boolean selection, so no host sync but the edge count's
        b, n, d = x.shape
        allowed = graph.adj.bool() & mask[:, :, None] & mask[:, None, :]  # (B, N, N)
        slots, _ = dense_to_sparse(allowed)  # (2, E): (b N + i, b N + j), i receives from j
        out = self.layer.forward_sparse(x.reshape(b * n, d), slots.flip(0))  # (B N, d)
        return out.view(b, n, d) * mask[..., None].to(x.dtype)


class Graph4MMAdapter(nn.Module):
    """Projections, per-modality structure encoders and MM-QFormer (all trainable).

    ``tokens_per_image`` None: ``num_query_tokens`` shared queries (``after_text``,
    ``pooled``); an int k: k queries per image node (``at_images``; module docstring).
    """

    def __init__(
        self,
        variant: str,
        text_dim: int,
        image_dim: int,
        lm_dim: int,
        hidden_dim: int = 256,
        num_heads: int = 4,
        alpha: float = 0.1,
        num_hops: int = 3,
        max_hop: int = 8,
        num_query_tokens: int = 8,
        qformer_layers: int = 1,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        diffusion_impl: str = "dense",
        tokens_per_image: int | None = None,
    ) -> None:
        super().__init__()
        if variant not in GRAPH4MM_VARIANTS:
            raise ValueError(f"variant = {variant!r}: Graph4MMAdapter takes {GRAPH4MM_VARIANTS}")
        base = "hop_aware" if variant == "hop_aware" else "hop_diffused"
        text_kind = "none" if variant == "no_text_structure" else base
        image_kind = "none" if variant == "no_image_structure" else base
        self.variant = variant
        self.text_proj = nn.Linear(text_dim, hidden_dim)
        self.image_proj = nn.Linear(image_dim, hidden_dim)
        common = dict(
            dim=hidden_dim, num_heads=num_heads, alpha=alpha, num_hops=num_hops,
            max_hop=max_hop, dropout=dropout, impl=diffusion_impl,
        )  # fmt: skip
        self.text_structure = StructureEncoder(text_kind, **common)
        self.image_structure = StructureEncoder(image_kind, **common)
        self.tokens_per_image = tokens_per_image
        queries = num_query_tokens if tokens_per_image is None else tokens_per_image
        self.qformer = MMQFormer(hidden_dim, queries, qformer_layers, num_heads, ffn_mult, dropout)
        self.image_query = None if tokens_per_image is None else nn.Linear(hidden_dim, hidden_dim)
        self.to_lm = nn.Linear(hidden_dim, lm_dim)
        self.token_groups = (
            (TokenGroup("queries", None, num_query_tokens),)
            if tokens_per_image is None
            else (TokenGroup("image", "image", tokens_per_image),)
        )

    def forward(self, inputs: Graph4MMInputs) -> tuple[Tensor, Tensor]:
        """Returns soft tokens (B, S, D_lm) and their mask (B, S): S = Nq (all real), or
        Np k per-image tokens (real where the image is)."""
        text = self.text_structure(self.text_proj(inputs.text.feats), inputs.text)  # (B, Nt, d)
        image = self.image_structure(self.image_proj(inputs.image.feats), inputs.image)
        if self.image_query is None:
            queries = self.qformer(text, inputs.text.mask, image, inputs.image.mask)  # (B, Nq, d)
            mask = torch.ones(queries.shape[:2], dtype=torch.bool, device=queries.device)
        else:
            b, n, d = image.shape
            k = self.qformer.queries.shape[0]
            seeds = self.qformer.queries.to(image.dtype) + self.image_query(image)[:, :, None]
            mask = inputs.image.mask.repeat_interleave(k, dim=1)  # (B, Np k)
            queries = self.qformer(
                text, inputs.text.mask, image, inputs.image.mask,
                queries=seeds.reshape(b, n * k, d), query_mask=mask,
            )  # fmt: skip
        return self.to_lm(queries), mask
