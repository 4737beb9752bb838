"""Hop-Diffused / Hop-Aware attention against independent references (float64)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch_geometric.utils import erdos_renyi_graph

from g4mm.model.hop_attention import (
    HopAwareAttention,
    HopDiffusedAttention,
    diffusion_coefficients,
)


@pytest.fixture(autouse=True)
def float64_default():
    """References in float64; restored afterwards so other test modules are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def random_directed_adj(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """adj[i, j] True iff i receives from j (no self-loops)."""
    adj = torch.rand(n, n, generator=gen) < p
    adj.fill_diagonal_(False)
    return adj


def reference_attention_matrix(layer: HopDiffusedAttention, x: torch.Tensor, adj: torch.Tensor):
    """Per-head row-stochastic A (nh, n, n) built node by node from the neighbour lists."""
    n = x.shape[0]
    nh, hd = layer.num_heads, layer.head_dim
    q, k, _ = layer.qkv(x).chunk(3, dim=-1)
    q, k = q.view(n, nh, hd), k.view(n, nh, hd)
    a = torch.zeros(nh, n, n)
    for h in range(nh):
        for i in range(n):
            neigh = [j for j in range(n) if adj[i, j] or j == i]
            s = torch.stack([q[i, h] @ k[j, h] / math.sqrt(hd) for j in neigh])
            a[h, i, neigh] = torch.softmax(s, dim=0)
    return a


def reference_output(layer: HopDiffusedAttention, x: torch.Tensor, adj: torch.Tensor):
    """H + W_O ||_h (sum_i theta_i A_h^i) V_h with explicit matrix powers."""
    n = x.shape[0]
    a = reference_attention_matrix(layer, x, adj)
    _, _, v = layer.qkv(x).chunk(3, dim=-1)
    v = v.view(n, layer.num_heads, layer.head_dim)
    theta = diffusion_coefficients(layer.alpha, layer.num_hops)
    heads = []
    for h in range(layer.num_heads):
        diff = sum(t * torch.linalg.matrix_power(a[h], i) for i, t in enumerate(theta))
        heads.append(diff @ v[:, h])
    return x + layer.out(torch.cat(heads, dim=-1))


def make_layer(dim=8, heads=2, alpha=0.2, hops=3, seed=0) -> HopDiffusedAttention:
    torch.manual_seed(seed)
    return HopDiffusedAttention(dim, num_heads=heads, alpha=alpha, num_hops=hops).eval()


def dense_to_union(x, adj, mask):
    """Disjoint union of the real nodes with PyG source->target edges (j -> i for adj[i, j])."""
    offsets, xs, edges, start = [], [], [], 0
    for b in range(x.shape[0]):
        idx = mask[b].nonzero().squeeze(1)
        xs.append(x[b, idx])
        sub = adj[b][idx][:, idx]
        recv, send = sub.nonzero(as_tuple=True)
        edges.append(torch.stack([send, recv]) + start)
        offsets.append(idx)
        start += len(idx)
    return torch.cat(xs), torch.cat(edges, dim=1), offsets


def test_coefficients_are_truncated_ppr_renormalised():
    theta = diffusion_coefficients(0.25, 4)
    assert len(theta) == 5
    assert sum(theta) == pytest.approx(1.0)
    for i in range(4):
        assert theta[i + 1] / theta[i] == pytest.approx(0.75)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_alpha_outside_open_interval_is_rejected(alpha):
    with pytest.raises(ValueError, match="alpha"):
        HopDiffusedAttention(8, alpha=alpha)


def test_negative_hops_rejected():
    with pytest.raises(ValueError, match="num_hops"):
        HopDiffusedAttention(8, num_hops=-1)


@pytest.mark.parametrize("hops", [0, 1, 3, 5])
def test_dense_matches_independent_reference(hops):
    gen = torch.Generator().manual_seed(hops)
    layer = make_layer(hops=hops)
    x = torch.randn(7, 8, generator=gen)
    adj = random_directed_adj(7, 0.3, gen)
    out = layer(x[None], adj[None])[0]
    torch.testing.assert_close(out, reference_output(layer, x, adj))


def test_sparse_matches_independent_reference():
    gen = torch.Generator().manual_seed(1)
    layer = make_layer(hops=4)
    x = torch.randn(9, 8, generator=gen)
    adj = random_directed_adj(9, 0.25, gen)
    recv, send = adj.nonzero(as_tuple=True)
    out = layer.forward_sparse(x, torch.stack([send, recv]))
    torch.testing.assert_close(out, reference_output(layer, x, adj))


def test_sparse_ignores_explicit_self_loops_and_duplicates_none():
    gen = torch.Generator().manual_seed(2)
    layer = make_layer()
    x = torch.randn(5, 8, generator=gen)
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    with_loops = torch.cat([edge_index, torch.arange(5).repeat(2, 1)], dim=1)
    torch.testing.assert_close(
        layer.forward_sparse(x, edge_index), layer.forward_sparse(x, with_loops)
    )


def test_approaches_personalised_pagerank_closed_form():
    """With W_V = W_O = I, the update is Acal H -> alpha (I - (1 - alpha) A)^-1 H."""
    gen = torch.Generator().manual_seed(3)
    alpha, n, dim = 0.3, 8, 4
    x = torch.randn(n, dim, generator=gen)
    adj = random_directed_adj(n, 0.4, gen)
    errors = []
    for hops in (1, 2, 4, 8, 16, 32, 64):
        layer = make_layer(dim=dim, heads=1, alpha=alpha, hops=hops)
        with torch.no_grad():
            layer.qkv.weight[2 * dim :].copy_(torch.eye(dim))
            layer.qkv.bias[2 * dim :].zero_()
            layer.out.weight.copy_(torch.eye(dim))
            layer.out.bias.zero_()
        a = reference_attention_matrix(layer, x, adj)[0]
        closed = alpha * torch.linalg.inv(torch.eye(n) - (1 - alpha) * a) @ x
        update = layer(x[None], adj[None])[0] - x
        errors.append((update - closed).abs().max().item())
    assert all(e2 < e1 for e1, e2 in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-8, errors


def test_dense_equals_sparse_on_random_padded_batches():
    gen = torch.Generator().manual_seed(4)
    layer = make_layer(dim=12, heads=3, hops=3)
    b, n = 4, 10
    x = torch.randn(b, n, 12, generator=gen)
    adj = torch.stack([random_directed_adj(n, 0.3, gen) for _ in range(b)])
    sizes = [10, 7, 3, 1]
    mask = torch.arange(n)[None] < torch.tensor(sizes)[:, None]
    dense = layer(x, adj, mask)
    xs, edge_index, _offsets = dense_to_union(x, adj, mask)
    sparse = layer.forward_sparse(xs, edge_index)
    torch.testing.assert_close(dense[mask], sparse)


def test_permutation_equivariance():
    gen = torch.Generator().manual_seed(5)
    layer = make_layer()
    x = torch.randn(1, 9, 8, generator=gen)
    adj = random_directed_adj(9, 0.3, gen)[None]
    perm = torch.randperm(9, generator=gen)
    out = layer(x, adj)
    out_perm = layer(x[:, perm], adj[:, perm][:, :, perm])
    torch.testing.assert_close(out_perm, out[:, perm])


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_k_hop_locality_on_a_path(hops):
    """Node 0's output depends on nodes within K hops and on nothing further."""
    gen = torch.Generator().manual_seed(6)
    layer = make_layer(hops=hops)
    n = 8
    adj = torch.zeros(n, n, dtype=torch.bool)
    idx = torch.arange(n - 1)
    adj[idx, idx + 1] = adj[idx + 1, idx] = True  # undirected path 0-1-...-7
    x = torch.randn(n, 8, generator=gen)
    base = layer.forward_sparse(x, adj.nonzero().flip(1).t())[0]
    far, near = x.clone(), x.clone()
    far[hops + 1] += 5.0
    near[hops] += 5.0
    out_far = layer(far[None], adj[None])[0, 0]
    out_near = layer(near[None], adj[None])[0, 0]
    torch.testing.assert_close(out_far, base)
    assert (out_near - base).abs().max() > 1e-6


def test_batch_independence():
    gen = torch.Generator().manual_seed(7)
    layer = make_layer()
    x = torch.randn(2, 6, 8, generator=gen)
    adj = torch.stack([random_directed_adj(6, 0.4, gen) for _ in range(2)])
    alone = layer(x[:1], adj[:1])
    other = x.clone()
    other[1] = torch.randn(6, 8, generator=gen) * 10
    together = layer(other, torch.stack([adj[0], ~adj[1]]))
    torch.testing.assert_close(together[:1], alone)


def test_padding_independence_and_absent_nodes_are_zero():
    gen = torch.Generator().manual_seed(8)
    layer = make_layer()
    x = torch.randn(1, 5, 8, generator=gen)
    adj = random_directed_adj(5, 0.5, gen)[None]
    ref = layer(x, adj)
    pad = 4
    x_pad = torch.cat([x, torch.randn(1, pad, 8, generator=gen) * 100], dim=1)
    adj_pad = torch.ones(1, 5 + pad, 5 + pad, dtype=torch.bool)  # padding wired to everything
    adj_pad[:, :5, :5] = adj
    mask = torch.arange(5 + pad)[None] < 5
    out = layer(x_pad, adj_pad, mask)
    torch.testing.assert_close(out[:, :5], ref)
    assert torch.all(out[:, 5:] == 0)
    assert torch.isfinite(out).all()


def test_gradients_flow_and_match_finite_differences():
    gen = torch.Generator().manual_seed(9)
    layer = make_layer(dim=4, heads=2, hops=2)
    x = torch.randn(1, 4, 4, generator=gen, requires_grad=True)
    adj = random_directed_adj(4, 0.5, gen)[None]
    assert torch.autograd.gradcheck(lambda t: layer(t, adj), (x,))
    edge_index = adj[0].nonzero().flip(1).t()
    assert torch.autograd.gradcheck(lambda t: layer.forward_sparse(t, edge_index), (x[0],))


class _LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op produces inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.op = t.numel(), func
        return out


def test_sparse_path_never_builds_an_n_by_n_tensor():
    """100k nodes: a dense N x N float would need 40 GB; the sparse path's largest tensor is
    O(|E'| d) (E' = E + N with the self-loops), seen at the dispatcher, whatever the RAM."""
    torch.manual_seed(10)
    layer = HopDiffusedAttention(16, num_heads=2, alpha=0.1, num_hops=3).float().eval()
    n, e, d = 100_000, 300_000, 16
    edge_index = torch.randint(0, n, (2, e))
    with torch.no_grad(), _LargestTensor() as largest:
        out = layer.forward_sparse(torch.randn(n, d, dtype=torch.float32), edge_index)
    assert out.shape == (n, d) and torch.isfinite(out).all()
    assert largest.numel <= (e + n) * d, (largest.numel, largest.op)


def test_sparse_on_a_pyg_random_graph_matches_dense():
    torch.manual_seed(11)
    layer = make_layer(dim=8, heads=2, hops=3)
    n = 30
    edge_index = erdos_renyi_graph(n, 0.1, directed=True)
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj[edge_index[1], edge_index[0]] = True
    x = torch.randn(n, 8)
    torch.testing.assert_close(layer.forward_sparse(x, edge_index), layer(x[None], adj[None])[0])


def test_repr_shows_alpha_and_k():
    assert "alpha=0.2, K=3" in repr(make_layer(alpha=0.2, hops=3))


def test_hop_aware_adds_learned_embedding_by_hop():
    torch.manual_seed(12)
    layer = HopAwareAttention(6, max_hop=2)
    x = torch.randn(1, 4, 6)
    hops = torch.tensor([[0, 1, 2, 5]])
    mask = torch.tensor([[True, True, True, False]])
    out = layer(x, hops, mask)
    emb = layer.hop_embedding.weight
    torch.testing.assert_close(out[0, :3], x[0, :3] + emb[[0, 1, 2]])
    assert torch.all(out[0, 3] == 0)
    out.sum().backward()
    assert layer.hop_embedding.weight.grad is not None
    # hops beyond max_hop share the last embedding
    torch.testing.assert_close(layer(x, torch.full((1, 4), 7))[0], x[0] + emb[2])
