"""Hop-Diffused Attention and Hop-Aware Attention (Graph4MM, ICML 2025, Sec. 3).

Both layers inject the structure of one modality's subgraph (text G_t or visual G_p) into the
node embeddings before MM-QFormer reads them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter, softmax


def diffusion_coefficients(alpha: float, num_hops: int) -> list[float]:
    r"""Truncated personalised-PageRank weights, renormalised to sum to one.

    .. math::
        \theta_i = \frac{\alpha (1 - \alpha)^i}{\sum_{j=0}^{K} \alpha (1 - \alpha)^j}
                 = \frac{\alpha (1 - \alpha)^i}{1 - (1 - \alpha)^{K + 1}},
        \qquad i = 0, \dots, K.

    The infinite series :math:`\sum_i \alpha (1-\alpha)^i` sums to one, so each row of
    :math:`\mathcal{A} = \sum_i \theta_i A^i` is a convex combination, like the closed form
    :math:`\alpha (I - (1-\alpha) A)^{-1}`. Truncating at K without renormalising (as the
    official code does) shrinks every update by :math:`1 - (1-\alpha)^{K+1}`; the normaliser
    tends to one as K grows, so the K -> infinity limit is unchanged.
    """
    check_alpha(alpha)
    if num_hops < 0:
        raise ValueError(f"num_hops = {num_hops}: must be >= 0")
    raw = [alpha * (1.0 - alpha) ** i for i in range(num_hops + 1)]
    total = sum(raw)
    return [t / total for t in raw]


def check_alpha(alpha: float) -> None:
    """Raise ValueError unless 0 < alpha < 1 (the teleport probability of the diffusion)."""
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha = {alpha}: must lie strictly in (0, 1)")


class HopDiffusedAttention(nn.Module):
    r"""Hop-Diffused Attention: graph-masked self-attention diffused over K hops.

    For node embeddings :math:`H \in \mathbb{R}^{|V| \times d}` of one modality subgraph with
    edge set :math:`E` (self-loops added), per head :math:`h`:

    .. math::
        A^{(h)}_{ij} &= \frac{\exp(q_i^\top k_j / \sqrt{d_h})}
                            {\sum_{l \in \mathcal{N}(i) \cup \{i\}} \exp(q_i^\top k_l / \sqrt{d_h})}
                       \quad (j \in \mathcal{N}(i) \cup \{i\}, \text{ else } 0)

        \mathcal{A}^{(h)} &= \sum_{i=0}^{K} \theta_i \, (A^{(h)})^i, \qquad
                             \theta_i \propto \alpha (1 - \alpha)^i

        H &\leftarrow H + W_O \, \big\Vert_h \, \mathcal{A}^{(h)} V^{(h)}

    with :math:`q = H W_Q`, :math:`k = H W_K`, :math:`V = H W_V`. Non-edges are excluded
    before the softmax (never renormalised after it), and :math:`\mathcal{A} V` is computed as
    K propagations :math:`Z_0 = V, Z_i = A Z_{i-1}`: :math:`O(K |E| d)` on the sparse path,
    no matrix power anywhere. See :func:`diffusion_coefficients` for :math:`\theta`.

    Args:
        dim: node embedding width d.
        num_heads: attention heads (d must be divisible by it). Default 1.
        alpha: teleport probability, strictly in (0, 1); small alpha reaches further. Default 0.1.
        num_hops: K, the number of propagations (terms i = 0..K). Default 3.
        dropout: dropout on the attention weights while training. Default 0.0.
        bias: whether the projections have a bias. Default True.

    Shapes:
        - dense ``forward``: x (B, N, d), adj (B, N, N) bool with ``adj[b, i, j]`` True iff node
          i attends to (receives from) node j, node_mask (B, N) bool -> (B, N, d).
          Nodes with ``node_mask`` False neither send nor receive and their output rows are 0.
        - ``forward_sparse``: x (|V|, d), edge_index (2, |E|) in PyG source -> target convention
          over a disjoint union of graphs -> (|V|, d).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        alpha: float = 0.1,
        num_hops: int = 3,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim = {dim} is not divisible by num_heads = {num_heads}")
        check_alpha(alpha)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.alpha, self.num_hops, self.dropout = float(alpha), int(num_hops), dropout
        self.register_buffer(
            "theta", torch.tensor(diffusion_coefficients(alpha, num_hops)), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, alpha={self.alpha}, K={self.num_hops}"

    def _split_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (..., d)
        shape = (*x.shape[:-1], self.num_heads, self.head_dim)
        return q.view(shape), k.view(shape), v.view(shape)  # each (..., nh, hd)

    def forward(self, x: Tensor, adj: Tensor, node_mask: Tensor | None = None) -> Tensor:
        """Dense batched path. See the class docstring for shapes and the adj convention."""
        b, n, _ = x.shape
        if adj.shape != (b, n, n):
            raise ValueError(f"adj has shape {tuple(adj.shape)}, expected {(b, n, n)}")
        if node_mask is None:
            node_mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        # allowed[b, i, j]: i receives from j; both must exist; self-loops for real nodes
        allowed = (adj.bool() | eye) & node_mask[:, :, None] & node_mask[:, None, :]
        allowed = allowed[:, None]  # (B, 1, N, N), broadcast over heads

        q, k, v = (t.transpose(1, 2) for t in self._split_heads(x))  # (B, nh, N, hd)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, nh, N, N)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, dim=-1) * allowed  # rows of absent nodes become all 0
        attn = nn.functional.dropout(attn, self.dropout, self.training)

        theta = self.theta.to(v.dtype)
        z, acc = v, theta[0] * v
        for i in range(1, self.num_hops + 1):
            z = attn @ z  # Z_i = A Z_{i-1}, (B, nh, N, hd)
            acc = acc + theta[i] * z
        update = self.out(acc.transpose(1, 2).reshape(b, n, self.dim))  # (B, N, d)
        return (x + update) * node_mask[..., None].to(x.dtype)

    def forward_sparse(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Sparse path over a disjoint union of graphs: O(K |E| d) time, O(|E| d) memory.

        Every node gets one self-loop; self-loops already in ``edge_index`` are kept as edges
        but get no attention (score -inf) instead of being filtered out, so the op sequence
        has no data-dependent shape (and no host sync on a GPU) beyond ``edge_index`` itself.
        """
        num_nodes = x.shape[0]
        loops = torch.arange(num_nodes, device=edge_index.device)
        src = torch.cat([edge_index[0], loops])  # (|E| + |V|,): message j -> i
        dst = torch.cat([edge_index[1], loops])  # dst i attends to src j
        duplicate_loop = torch.cat([edge_index[0] == edge_index[1], loops < 0])  # (|E| + |V|,)

        q, k, v = self._split_heads(x)  # (|V|, nh, hd)
        scores = (q[dst] * k[src]).sum(-1) / math.sqrt(self.head_dim)  # (|E'|, nh)
        scores = scores.masked_fill(duplicate_loop[:, None], float("-inf"))
        attn = softmax(scores, index=dst, num_nodes=num_nodes)  # normalised per receiver
        attn = nn.functional.dropout(attn, self.dropout, self.training)[..., None]

        theta = self.theta.to(v.dtype)
        z, acc = v, theta[0] * v
        for i in range(1, self.num_hops + 1):
            z = scatter(attn * z[src], dst, dim=0, dim_size=num_nodes, reduce="sum")
            acc = acc + theta[i] * z  # (|V|, nh, hd)
        return x + self.out(acc.reshape(num_nodes, self.dim))


class HopAwareAttention(nn.Module):
    r"""Hop-Aware Attention: the paper's O(d) alternative to hop diffusion.

    .. math::
        H_v \leftarrow H_v + e_{\mathrm{hop}}^{(\min(h(v), h_{\max}))}

    where :math:`h(v)` is the BFS hop distance of node v to the target node and
    :math:`e_{\mathrm{hop}} \in \mathbb{R}^{(h_{\max}+1) \times d}` is learned, so the
    downstream MM-QFormer learns how much each hop matters.

    Args:
        dim: node embedding width d.
        max_hop: hops beyond it share the last embedding. Default 8.

    Shapes:
        x (B, N, d) or (|V|, d); hops (B, N) or (|V|,) long; node_mask (B, N) bool or None
        -> same shape as x (rows of absent nodes are 0).
    """

    def __init__(self, dim: int, max_hop: int = 8) -> None:
        super().__init__()
        if max_hop < 0:
            raise ValueError(f"max_hop = {max_hop}: must be >= 0")
        self.dim, self.max_hop = dim, max_hop
        self.hop_embedding = nn.Embedding(max_hop + 1, dim)
        nn.init.normal_(self.hop_embedding.weight, std=0.02)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_hop={self.max_hop}"

    def forward(self, x: Tensor, hops: Tensor, node_mask: Tensor | None = None) -> Tensor:
        out = x + self.hop_embedding(hops.clamp(0, self.max_hop))
        if node_mask is not None:
            out = out * node_mask[..., None].to(out.dtype)
        return out
