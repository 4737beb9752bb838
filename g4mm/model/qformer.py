"""MM-QFormer: learnable queries that read the text subgraph and attend to the visual one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedAttention(nn.Module):
    r"""Multi-head attention with a key-padding mask, through SDPA.

    .. math::
        \mathrm{Attn}(X, Y) = W_O \big\Vert_h \mathrm{softmax}\!\left(
            \frac{(X W_Q^h)(Y W_K^h)^\top}{\sqrt{d_h}} + M\right) Y W_V^h,
        \qquad M_{ij} = -\infty \text{ where key } j \text{ is padding.}

    A query whose keys are all padding gets an update of exactly 0 (not NaN).

    Shapes:
        x (B, Lq, d), context (B, Lk, d), key_mask (B, Lk) bool (True = real) -> (B, Lq, d).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim = {dim} is not divisible by num_heads = {num_heads}")
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None) -> Tensor:
        b, lq, d = x.shape
        lk = context.shape[1]
        q = self.q(x).view(b, lq, self.num_heads, self.head_dim).transpose(1, 2)  # (B,nh,Lq,hd)
        k, v = self.kv(context).view(b, lk, 2, self.num_heads, self.head_dim).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, Lk, hd)
        attn_mask, has_keys = None, None
        if key_mask is not None:
            has_keys = key_mask.any(dim=1)  # (B,)
            # samples with no real key attend to everything, then their update is zeroed
            safe = key_mask | ~has_keys[:, None]
            attn_mask = safe[:, None, None, :]  # (B, 1, 1, Lk)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, Lq, hd)
        y = self.out(y.transpose(1, 2).reshape(b, lq, d))
        if has_keys is not None:
            y = y * has_keys[:, None, None].to(y.dtype)
        return y


class MMQFormerLayer(nn.Module):
    r"""One MM-QFormer layer (post-norm, as BLIP-2's Q-Former).

    .. math::
        [Q; H_T] &\leftarrow \mathrm{LN}([Q; H_T] + \mathrm{SelfAttn}([Q; H_T]))
            && \text{(shared self-attention: queries read the text nodes)}\\
        Q &\leftarrow \mathrm{LN}(Q + \mathrm{CrossAttn}(Q, H_P))
            && \text{(queries attend to the visual nodes)}\\
        Q &\leftarrow \mathrm{LN}(Q + \mathrm{FFN}(Q))

    Shapes:
        queries (B, Nq, d), text (B, Nt, d), text_mask (B, Nt), image (B, Np, d),
        image_mask (B, Np), query_mask (B, Nq) or None (all real)
        -> (queries (B, Nq, d), text (B, Nt, d)). A masked query is never attended to.
    """

    def __init__(self, dim: int, num_heads: int, ffn_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MaskedAttention(dim, num_heads, dropout)
        self.cross_attn = MaskedAttention(dim, num_heads, dropout)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_mult * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_mult * dim, dim),
        )
        self.norm_self, self.norm_cross, self.norm_ffn = (nn.LayerNorm(dim) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        queries: Tensor,
        text: Tensor,
        text_mask: Tensor,
        image: Tensor,
        image_mask: Tensor,
        query_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        nq = queries.shape[1]
        if query_mask is None:
            query_mask = text_mask.new_ones(text_mask.shape[0], nq)
        joint = torch.cat([queries, text], dim=1)  # (B, Nq + Nt, d)
        joint_mask = torch.cat([query_mask, text_mask], dim=1)
        joint = self.norm_self(joint + self.drop(self.self_attn(joint, joint, joint_mask)))
        queries, text = joint[:, :nq], joint[:, nq:]
        queries = self.norm_cross(queries + self.drop(self.cross_attn(queries, image, image_mask)))
        queries = self.norm_ffn(queries + self.drop(self.ffn(queries)))
        return queries, text * text_mask[..., None].to(text.dtype)


class MMQFormer(nn.Module):
    """L MM-QFormer layers over learnable queries (see :class:`MMQFormerLayer`).

    Args:
        dim: width d of queries and node embeddings.
        num_queries: number of learnable query tokens Nq.
        num_layers: L. Default 1 (the paper's setting).
        num_heads: attention heads. Default 4.
        ffn_mult: FFN hidden width multiple. Default 4.
        dropout: dropout on attention and FFN outputs. Default 0.0.

    Shapes:
        text (B, Nt, d), text_mask (B, Nt) bool, image (B, Np, d), image_mask (B, Np) bool
        -> queries (B, Nq, d). Padding nodes are never attended to; a sample with no image
        node gets no cross-attention update. ``queries`` (B, Nq', d) with ``query_mask``
        (B, Nq') replace the learnt queries as the starting point (per-image queries:
        :class:`g4mm.model.adapters.Graph4MMAdapter`); masked ones are never attended to.
    """

    def __init__(
        self,
        dim: int,
        num_queries: int,
        num_layers: int = 1,
        num_heads: int = 4,
        ffn_mult: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_queries < 1:
            raise ValueError(f"num_queries = {num_queries}: must be >= 1")
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.layers = nn.ModuleList(
            MMQFormerLayer(dim, num_heads, ffn_mult, dropout) for _ in range(num_layers)
        )

    def forward(
        self,
        text: Tensor,
        text_mask: Tensor,
        image: Tensor,
        image_mask: Tensor,
        queries: Tensor | None = None,
        query_mask: Tensor | None = None,
    ) -> Tensor:
        if queries is None:
            queries = self.queries.to(text.dtype).expand(text.shape[0], -1, -1)  # (B, Nq, d)
        for layer in self.layers:
            queries, text = layer(queries, text, text_mask, image, image_mask, query_mask)
        return queries
