r"""Dirichlet energy of node signals: the standard over-smoothing measure (Ray-free).

For a graph with edge set :math:`E` (treated as undirected: every edge is counted in both
directions, self-loops dropped) and node degrees :math:`d_i` (self-loops excluded),

.. math::
    E(X) = \frac{1}{2} \sum_{(i, j) \in E}
           \left\lVert \frac{x_i}{\sqrt{1 + d_i}} - \frac{x_j}{\sqrt{1 + d_j}} \right\rVert^2
         = \operatorname{tr}\!\left(X^\top \tilde L_{\mathrm{sym}} X\right),
    \qquad
    \tilde L_{\mathrm{sym}} = I - \tilde D^{-1/2} (A + I) \tilde D^{-1/2},
    \quad \tilde D = D + I,

the symmetric-normalised form with self-loop degrees used by Cai & Wang (2020) and surveyed by
Rusch et al. (2023). (The added self-loops contribute nothing to the edge sum; they only enter
through the degrees.) Its null space is spanned, per connected component, by
:math:`x_i \propto \sqrt{1 + d_i}`, the fixed direction of GCN propagation. With
``normalized=False`` it is the plain :math:`\frac{1}{2}\sum_{(i,j) \in E} \lVert x_i - x_j
\rVert^2 = \operatorname{tr}(X^\top L X)`, whose null space is the constant signal per
component, the fixed direction of row-stochastic (attention / mean) propagation.
"""

from __future__ import annotations

from torch import Tensor
from torch_geometric.utils import degree, remove_self_loops, to_undirected


def _undirected(edge_index: Tensor, num_nodes: int) -> Tensor:
    edge_index, _ = remove_self_loops(edge_index)
    return to_undirected(edge_index, num_nodes=num_nodes)  # coalesced, both directions once


def dirichlet_energy(x: Tensor, edge_index: Tensor, normalized: bool = True) -> Tensor:
    """Dirichlet energy of ``x`` (|V|, d) or (|V|,) on ``edge_index`` (2, |E|); a 0-dim tensor.

    See the module docstring for the formula. Directed input is symmetrised and duplicate
    edges are merged, so the energy depends only on the underlying simple undirected graph.
    """
    if x.dim() == 1:
        x = x[:, None]
    num_nodes = x.shape[0]
    ei = _undirected(edge_index, num_nodes)
    src, dst = ei
    if normalized:
        deg = degree(dst, num_nodes=num_nodes, dtype=x.dtype)  # neighbours, self-loop excluded
        x = x * (1.0 + deg).rsqrt()[:, None]
    diff = x[src] - x[dst]  # every undirected edge appears twice, hence the 1/2
    return 0.5 * diff.pow(2).sum()


def relative_dirichlet_energy(
    x: Tensor, edge_index: Tensor, normalized: bool = True, eps: float = 1e-12
) -> Tensor:
    r"""Scale-invariant energy :math:`E(X) / \lVert X \rVert_F^2`.

    Invariant to ``x -> c * x``, so the random weight scale of a layer does not decide a
    comparison of energies before and after it. For ``normalized=True`` it lies in [0, 2)
    (the spectrum of :math:`\tilde L_{\mathrm{sym}}`); for ``normalized=False`` in
    [0, 2 max_i d_i].
    """
    if x.dim() == 1:
        x = x[:, None]
    return dirichlet_energy(x, edge_index, normalized) / x.pow(2).sum().clamp_min(eps)
