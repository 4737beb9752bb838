"""Tests for g4mm.graph: the multimodal graph, tau-hop modality subgraphs and dense batching.

References are independent: hop distances come from torch_geometric's ``k_hop_subgraph``,
induced subgraphs from plain Python sets over the graph's edge list.
"""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import SimpleConv
from torch_geometric.utils import k_hop_subgraph, to_undirected

from g4mm.graph import (
    DenseSubgraphBatch,
    EdgeType,
    ModalitySubgraph,
    MultimodalGraph,
    dense_batch_to_edge_index,
    edge_index_to_attention_adj,
    extract_subgraphs,
    hop_distances,
    pad_subgraphs,
)

TT, II, TI = EdgeType.TEXT_TEXT, EdgeType.IMAGE_IMAGE, EdgeType.TEXT_IMAGE


# ---------------------------------------------------------------------------- helpers
def random_graph(
    num_nodes: int, num_edges: int, seed: int, *, directed: bool = True
) -> MultimodalGraph:
    """Random graph, ~70% nodes with text, ~60% with an image, typed edges consistent."""
    gen = torch.Generator().manual_seed(seed)
    has_text = torch.rand(num_nodes, generator=gen) < 0.7
    has_image = torch.rand(num_nodes, generator=gen) < 0.6
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    dst = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    coin = torch.rand(num_edges, generator=gen)
    both_text = has_text[src] & has_text[dst]
    both_image = has_image[src] & has_image[dst]
    edge_type = torch.full((num_edges,), int(TI))
    edge_type[both_image & (coin < 0.7)] = int(II)
    edge_type[both_text & (coin < 0.4)] = int(TT)
    edge_index = torch.stack([src, dst])
    if not directed:
        edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
        edge_type = torch.cat([edge_type, edge_type])
    return MultimodalGraph(
        node_ids=[f"n{i}" for i in range(num_nodes)],
        texts=[f"text {i}" if t else None for i, t in enumerate(has_text.tolist())],
        images=[f"img/{i}.png" if m else None for i, m in enumerate(has_image.tolist())],
        edge_index=edge_index,
        edge_type=edge_type,
        name=f"random{seed}",
    )


def reference_hops(graph: MultimodalGraph, target: int, tau: int) -> dict[int, int]:
    """{node: hop} from k_hop_subgraph for k = 0..tau on the undirected union of all edges."""
    edge_index = to_undirected(graph.edge_index, num_nodes=graph.num_nodes)
    hops: dict[int, int] = {}
    for k in range(tau + 1):
        subset, _, _, _ = k_hop_subgraph(target, k, edge_index, num_nodes=graph.num_nodes)
        for v in subset.tolist():
            hops.setdefault(v, k)
    return hops


def edge_set(graph: MultimodalGraph, etype: EdgeType) -> set[tuple[int, int]]:
    mask = graph.edge_type == int(etype)
    return set(map(tuple, graph.edge_index[:, mask].t().tolist()))


def global_edges(sub: ModalitySubgraph) -> set[tuple[int, int]]:
    """The subgraph's edges in global node indices."""
    return set(map(tuple, sub.node_index[sub.edge_index].t().tolist()))


def make_sub(nodes: list[int], edges: list[tuple[int, int]], hops: list[int]) -> ModalitySubgraph:
    return ModalitySubgraph(
        node_index=torch.tensor(nodes, dtype=torch.long),
        edge_index=torch.tensor(edges, dtype=torch.long).view(-1, 2).t(),
        hops=torch.tensor(hops, dtype=torch.long),
    )


def small_graph(**overrides: object) -> MultimodalGraph:
    """a -tt- b -ii- c -ti- d ; a,b,d have text ; b,c,d have an image."""
    kwargs: dict[str, object] = {
        "node_ids": ["a", "b", "c", "d"],
        "texts": ["ta", "tb", None, "td"],
        "images": [None, "b.png", "c.png", "d.png"],
        "edge_index": torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]]),
        "edge_type": torch.tensor([TT, TT, II, II, TI, TI]),
        "name": "small.jsonl",
    }
    kwargs.update(overrides)
    return MultimodalGraph(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the graph
def test_from_edge_list_undirected_dedup_and_parse() -> None:
    g = MultimodalGraph.from_edge_list(
        ["a", "b", "c"],
        ["ta", "tb", "tc"],
        ["a.png", None, "c.png"],
        [("a", "b", "t-t"), ("b", "a", TT), ("a", "c", "image_image"), ("b", "c", "TI")],
        labels=[1, -1, 0],
    )
    triples = set(zip(*g.edge_index.tolist(), g.edge_type.tolist(), strict=True))
    assert triples == {
        (0, 1, TT),
        (1, 0, TT),
        (0, 2, II),
        (2, 0, II),
        (1, 2, TI),
        (2, 1, TI),
    }
    assert g.num_edges == 6
    assert g.has_text.tolist() == [True, True, True]
    assert g.has_image.tolist() == [True, False, True]

    directed = MultimodalGraph.from_edge_list(
        ["a", "b"], ["ta", "tb"], [None, None], [("a", "b", TT), ("a", "b", TT)], undirected=False
    )
    assert directed.edge_index.tolist() == [[0], [1]]


def test_has_text_blank_is_missing() -> None:
    g = MultimodalGraph(
        ["a", "b", "c"],
        ["x", "  ", None],
        [None, "", "c.png"],
        torch.zeros(2, 0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
    )
    assert g.has_text.tolist() == [True, False, False]
    assert g.has_image.tolist() == [False, False, True]


def test_to_pyg() -> None:
    g = small_graph(labels=torch.tensor([0, -1, 2, 1]))
    data = g.to_pyg()
    assert data.num_nodes == 4
    assert torch.equal(data.edge_index, g.edge_index)
    assert torch.equal(data.edge_type, g.edge_type)
    assert data.has_text.tolist() == [True, True, False, True]
    assert data.has_image.tolist() == [False, True, True, True]
    assert data.y.tolist() == [0, -1, 2, 1]
    assert small_graph().to_pyg().y is None


def test_csr_is_cached_undirected_union() -> None:
    g = MultimodalGraph(
        ["a", "b", "c"],
        ["x", "y", "z"],
        [None, None, None],
        torch.tensor([[0, 2], [1, 1]]),
        torch.tensor([TT, TI]),
    )
    rowptr, col = g.csr()
    assert g.csr() is g.csr()
    neighbours = [col[rowptr[v] : rowptr[v + 1]].tolist() for v in range(3)]
    assert neighbours == [[1], [0, 2], [1]]
    rowptr_tt, col_tt = g.csr(TT)  # directed, this type only
    assert [col_tt[rowptr_tt[v] : rowptr_tt[v + 1]].tolist() for v in range(3)] == [[1], [], []]


BAD_GRAPHS = [
    ({"texts": ["ta", "tb", None]}, r"small\.jsonl.*texts has length 3"),
    ({"images": [None]}, r"small\.jsonl.*images has length 1"),
    ({"labels": torch.tensor([0, 1])}, r"small\.jsonl.*labels has length 2"),
    ({"labels": torch.tensor([0, 1, -2, 0])}, r"labels\[2\] = -2"),
    ({"node_ids": ["a", "b", "a", "d"]}, r"small\.jsonl.*duplicate node id 'a'"),
    ({"edge_index": torch.tensor([0, 1, 1])}, r"edge_index must be 2-dimensional"),
    ({"edge_index": torch.zeros(3, 6, dtype=torch.long)}, r"edge_index must have shape \[2, E\]"),
    ({"edge_index": torch.zeros(2, 6)}, r"edge_index must be an integer tensor.*float"),
    ({"edge_type": torch.tensor([0, 0, 1])}, r"edge_type has length 3.*6 edges"),
    ({"edge_type": torch.tensor([0, 0, 1, 1, 7, 2])}, r"edge_type\[4\] = 7"),
    (
        {"edge_index": torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 9, 1, 3, 2]])},
        r"edge_index target of edge 2 is 9",
    ),
    (
        {"edge_index": torch.tensor([[0, 1, 1, 2, -1, 3], [1, 0, 2, 1, 3, 2]])},
        r"edge_index source of edge 4 is -1",
    ),
    ({"edge_type": torch.tensor([TT, TT, TT, II, TI, TI])}, r"edge_type\[2\] = TEXT_TEXT.*'c'"),
    ({"edge_type": torch.tensor([II, TT, II, II, TI, TI])}, r"edge_type\[0\] = IMAGE_IMAGE.*'a'"),
]


@pytest.mark.parametrize(("overrides", "match"), BAD_GRAPHS)
def test_graph_validation(overrides: dict[str, object], match: str) -> None:
    small_graph()  # the unmodified graph is valid
    with pytest.raises(ValueError, match=match):
        small_graph(**overrides)


def test_from_edge_list_validation() -> None:
    ids, texts, images = ["a", "b"], ["ta", "tb"], ["a.png", None]
    with pytest.raises(ValueError, match=r"g\.csv: edge 1 refers to unknown node id 'zz'"):
        MultimodalGraph.from_edge_list(
            ids, texts, images, [("a", "b", TT), ("a", "zz", TT)], name="g.csv"
        )
    with pytest.raises(ValueError, match=r"edge 0 .*unknown edge type 'x-y'"):
        MultimodalGraph.from_edge_list(ids, texts, images, [("a", "b", "x-y")])
    with pytest.raises(ValueError, match=r"IMAGE_IMAGE.*'b'.*has no image"):
        MultimodalGraph.from_edge_list(ids, texts, images, [("a", "b", "i-i")])


# ---------------------------------------------------------------------------- hop distances
@pytest.mark.parametrize("seed", range(6))
def test_hop_distances_match_k_hop_subgraph(seed: int) -> None:
    g = random_graph(60, 70, seed, directed=seed % 2 == 0)
    tau = 4
    for target in range(0, 60, 7):
        nodes, hops = hop_distances(g, target, tau)
        ref = reference_hops(g, target, tau)
        assert dict(zip(nodes.tolist(), hops.tolist(), strict=True)) == ref
        assert nodes[0].item() == target and hops[0].item() == 0
        keys = list(zip(hops.tolist(), nodes.tolist(), strict=True))
        assert keys == sorted(keys)  # ordered by (hop, index), no duplicates
        assert len(set(nodes.tolist())) == nodes.numel()


def test_hop_distances_tau_zero_and_excludes_beyond_tau() -> None:
    # path a - b - c - d over mixed edge types
    g = small_graph()
    assert hop_distances(g, 0, 0)[0].tolist() == [0]
    nodes, hops = hop_distances(g, 0, 2)
    assert nodes.tolist() == [0, 1, 2] and hops.tolist() == [0, 1, 2]
    assert 3 not in extract_subgraphs(g, 0, 2, 10, 10).image.node_index.tolist()
    assert 3 in extract_subgraphs(g, 0, 3, 10, 10).image.node_index.tolist()


def test_hop_distances_validation() -> None:
    g = small_graph()
    with pytest.raises(ValueError, match="tau must be >= 0, got -1"):
        hop_distances(g, 0, -1)
    with pytest.raises(ValueError, match=r"target must be in \[0, 4\), got 4"):
        hop_distances(g, 4, 1)


def test_hop_distances_large_graph() -> None:
    """100k nodes, ~1M directed edges, 200 targets: BFS cost follows the neighbourhood."""
    num_nodes, num_pairs = 100_000, 500_000
    gen = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, num_nodes, (2, num_pairs), generator=gen)
    g = MultimodalGraph(
        node_ids=[f"n{i}" for i in range(num_nodes)],
        texts=["t"] * num_nodes,
        images=[None] * num_nodes,
        edge_index=torch.cat([pairs, pairs.flip(0)], dim=1),
        edge_type=torch.full((2 * num_pairs,), int(TI)),
    )
    targets = torch.randint(0, num_nodes, (200,), generator=gen).tolist()
    sizes = []
    for target in targets:
        nodes, hops = hop_distances(g, target, 2)
        assert nodes[0].item() == target
        sizes.append(nodes.numel())
    assert min(sizes) > 1
    ref = reference_hops(g, targets[0], 2)
    nodes, hops = hop_distances(g, targets[0], 2)
    assert dict(zip(nodes.tolist(), hops.tolist(), strict=True)) == ref


# ---------------------------------------------------------------------------- modality subgraphs
@pytest.mark.parametrize("seed", range(4))
def test_modality_membership_and_edge_types(seed: int) -> None:
    g = random_graph(50, 90, seed)
    tt, ii = edge_set(g, TT), edge_set(g, II)
    tau = 2
    for target in range(0, 50, 5):
        sub = extract_subgraphs(g, target, tau, 1000, 1000)
        ref = reference_hops(g, target, tau)
        for modality, has, typed in (("text", g.has_text, tt), ("image", g.has_image, ii)):
            part: ModalitySubgraph = getattr(sub, modality)
            expected = sorted((h, v) for v, h in ref.items() if has[v])
            assert list(zip(part.hops.tolist(), part.node_index.tolist(), strict=True)) == expected
            kept = set(part.node_index.tolist())
            induced = {(u, v) for u, v in typed if u in kept and v in kept}
            assert global_edges(part) == induced  # exactly the typed edges among kept nodes
            assert part.edge_index.size(1) == len(induced)


def test_text_image_edges_never_in_modality_subgraphs() -> None:
    # both nodes carry text and image but are joined only by a TEXT_IMAGE edge
    g = MultimodalGraph.from_edge_list(
        ["a", "b", "c"],
        ["ta", "tb", "tc"],
        ["a.png", "b.png", "c.png"],
        [("a", "b", TI), ("b", "c", TT), ("a", "c", II)],
    )
    sub = extract_subgraphs(g, 0, 2, 10, 10)
    assert sub.text.node_index.tolist() == [0, 1, 2]
    assert global_edges(sub.text) == {(1, 2), (2, 1)}
    assert sub.image.node_index.tolist() == [0, 1, 2]
    assert global_edges(sub.image) == {(0, 2), (2, 0)}
    assert sub.text.hops.tolist() == [0, 1, 1] == sub.image.hops.tolist()


def test_directed_edges_keep_direction_in_subgraph() -> None:
    g = MultimodalGraph(
        ["a", "b"], ["ta", "tb"], [None, None], torch.tensor([[1], [0]]), torch.tensor([TT])
    )
    sub = extract_subgraphs(g, 0, 1, 5, 5)
    assert sub.text.node_index.tolist() == [0, 1]
    assert sub.text.edge_index.tolist() == [[1], [0]]  # local 1 -> 0, as in the graph
    assert sub.image.num_nodes == 0 and sub.image.edge_index.shape == (2, 0)


def test_caps_keep_nearest_hops_with_index_tie_break() -> None:
    # target 0; hop 1: 7, 3, 5 (all text) ; hop 2: 1, 2 (via 3) ; only 5, 2 have images
    ids = [str(i) for i in range(8)]
    texts = ["t"] * 8
    images = [None, None, "2.png", None, None, "5.png", None, None]
    edges = [("0", "7", TI), ("0", "5", TT), ("0", "3", TT), ("3", "2", TT), ("3", "1", TI)]
    g = MultimodalGraph.from_edge_list(ids, texts, images, edges)
    sub = extract_subgraphs(g, 0, 2, max_text_nodes=3, max_image_nodes=1)
    assert sub.text.node_index.tolist() == [0, 3, 5]
    assert sub.text.hops.tolist() == [0, 1, 1]
    assert global_edges(sub.text) == {(0, 3), (3, 0), (0, 5), (5, 0)}
    assert sub.image.node_index.tolist() == [5]  # target has no image: not first, not present
    assert sub.image.hops.tolist() == [1]
    full = extract_subgraphs(g, 0, 2, 100, 100)
    assert full.text.node_index.tolist() == [0, 3, 5, 7, 1, 2]
    assert full.image.node_index.tolist() == [5, 2]
    assert full.image.hops.tolist() == [1, 2]


def test_target_first_when_it_has_the_modality() -> None:
    g = random_graph(40, 80, 7)
    for target in range(40):
        sub = extract_subgraphs(g, target, 2, 8, 8)
        for part, has in ((sub.text, g.has_text), (sub.image, g.has_image)):
            if has[target]:
                assert part.node_index[0].item() == target and part.hops[0].item() == 0
            else:
                assert target not in part.node_index.tolist()
                assert bool((part.hops >= 1).all())
            assert part.num_nodes <= 8


def test_extract_is_deterministic() -> None:
    a = extract_subgraphs(random_graph(80, 200, 3), 11, 3, 10, 6)
    b = extract_subgraphs(random_graph(80, 200, 3), 11, 3, 10, 6)  # fresh graph, fresh cache
    g = random_graph(80, 200, 3)
    c = extract_subgraphs(g, 11, 3, 10, 6)
    d = extract_subgraphs(g, 11, 3, 10, 6)  # cached CSR
    for other in (b, c, d):
        assert other.target == a.target == 11
        for name in ("text", "image"):
            x, y = getattr(a, name), getattr(other, name)
            assert torch.equal(x.node_index, y.node_index)
            assert torch.equal(x.edge_index, y.edge_index)
            assert torch.equal(x.hops, y.hops)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1, 1, 5, 5), r"target must be in \[0, 4\), got -1"),
        ((4, 1, 5, 5), r"target must be in \[0, 4\), got 4"),
        ((0, -2, 5, 5), r"tau must be >= 0, got -2"),
        ((0, 1, 0, 5), r"max_text_nodes must be >= 1, got 0"),
        ((0, 1, 5, -3), r"max_image_nodes must be >= 1, got -3"),
        ((0, 1.5, 5, 5), r"tau must be an int, got 1.5"),
    ],
)
def test_extract_validation(args: tuple, match: str) -> None:
    g = small_graph()
    extract_subgraphs(g, 0, 1, 5, 5)
    with pytest.raises(ValueError, match=match):
        extract_subgraphs(g, *args)


# ---------------------------------------------------------------------------- dense batching
def test_directed_convention() -> None:
    adj = edge_index_to_attention_adj(torch.tensor([[0], [1]]), 2)  # edge 0 -> 1
    assert adj.tolist() == [[False, False], [True, False]]
    batch = pad_subgraphs([make_sub([10, 11], [(0, 1)], [0, 1])])
    assert batch.adj[0, 1, 0].item() and not batch.adj[0, 0, 1].item()


def test_edge_index_to_attention_adj_validation() -> None:
    with pytest.raises(ValueError, match=r"edge_index entry 2 out of range \[0, 2\)"):
        edge_index_to_attention_adj(torch.tensor([[0], [2]]), 2)
    assert edge_index_to_attention_adj(torch.zeros(2, 0, dtype=torch.long), 0).shape == (0, 0)


def test_pad_subgraphs() -> None:
    subs = [
        make_sub([4, 9, 2], [(0, 1), (1, 0), (2, 1)], [0, 1, 2]),
        make_sub([], [], []),
        make_sub([7], [], [1]),
    ]
    batch = pad_subgraphs(subs, max_nodes=4)
    assert isinstance(batch, DenseSubgraphBatch)
    assert batch.node_index.tolist() == [[4, 9, 2, -1], [-1] * 4, [7, -1, -1, -1]]
    assert batch.mask.tolist() == [[True] * 3 + [False], [False] * 4, [True] + [False] * 3]
    assert batch.hops.tolist() == [[0, 1, 2, 0], [0] * 4, [1, 0, 0, 0]]
    assert batch.adj.shape == (3, 4, 4) and batch.adj.dtype == torch.bool
    expected = torch.zeros(3, 4, 4, dtype=torch.bool)
    expected[0, 1, 0] = expected[0, 0, 1] = expected[0, 1, 2] = True  # adj[dst, src]
    assert torch.equal(batch.adj, expected)
    pad = ~(batch.mask[:, :, None] & batch.mask[:, None, :])
    assert not batch.adj[pad].any()
    for b, sub in enumerate(subs):
        n = sub.num_nodes
        assert torch.equal(batch.adj[b, :n, :n], edge_index_to_attention_adj(sub.edge_index, n))

    assert pad_subgraphs(subs).mask.shape == (3, 3)  # width = largest n
    assert pad_subgraphs([make_sub([], [], [])]).mask.shape == (1, 1)  # at least one column


def test_pad_subgraphs_validation() -> None:
    sub = make_sub([1, 2, 3], [(0, 1)], [0, 1, 1])
    with pytest.raises(ValueError, match="subgraph 1 has 3 nodes, more than max_nodes=2"):
        pad_subgraphs([make_sub([5], [], [0]), sub], max_nodes=2)
    with pytest.raises(ValueError, match="max_nodes must be >= 1"):
        pad_subgraphs([sub], max_nodes=0)
    with pytest.raises(ValueError, match=r"subgraph 0: edge_index entry 3 out of range"):
        pad_subgraphs([make_sub([1, 2, 3], [(0, 3)], [0, 1, 1])])


def test_dense_batch_to_edge_index_round_trip() -> None:
    g = random_graph(60, 150, 11)
    subs = [extract_subgraphs(g, t, 2, 12, 12) for t in range(0, 60, 6)]
    parts = [s.text for s in subs] + [s.image for s in subs]
    batch = pad_subgraphs(parts)
    edge_index, node_batch = dense_batch_to_edge_index(batch.adj, batch.mask)

    offset, expected_edges, expected_batch = 0, set(), []
    for b, part in enumerate(parts):
        expected_edges |= set(map(tuple, (part.edge_index + offset).t().tolist()))
        expected_batch += [b] * part.num_nodes
        offset += part.num_nodes
    assert set(map(tuple, edge_index.t().tolist())) == expected_edges
    assert edge_index.size(1) == len(expected_edges) > 0
    assert node_batch.tolist() == expected_batch
    # global node ids line up with the real slots in row-major order
    assert torch.equal(batch.node_index[batch.mask], torch.cat([p.node_index for p in parts]))


def test_pyg_layer_on_union_matches_dense_layer() -> None:
    subs = [
        make_sub([0, 1, 2], [(0, 1), (2, 1), (1, 0)], [0, 1, 1]),
        make_sub([5, 6], [(1, 0)], [0, 1]),
    ]
    batch = pad_subgraphs(subs, max_nodes=4)
    edge_index, _ = dense_batch_to_edge_index(batch.adj, batch.mask)
    x_dense = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))  # [B, N, d]
    x_dense[~batch.mask] = 0
    dense_out = batch.adj.float() @ x_dense  # [B, N, d], row i sums its senders j
    sparse_out = SimpleConv(aggr="sum")(x_dense[batch.mask], edge_index)  # [n_real, d]
    assert torch.allclose(dense_out[batch.mask], sparse_out)
    assert not torch.equal(
        sparse_out, SimpleConv(aggr="sum")(x_dense[batch.mask], edge_index.flip(0))
    )


def test_dense_batch_to_edge_index_any_mask_and_validation() -> None:
    mask = torch.tensor([[False, True, True], [True, False, True]])
    adj = torch.zeros(2, 3, 3, dtype=torch.bool)
    adj[0, 2, 1] = True  # batch 0: slot 1 -> slot 2  => real 0 -> real 1
    adj[1, 0, 2] = True  # batch 1: slot 2 -> slot 0  => real 3 -> real 2
    edge_index, node_batch = dense_batch_to_edge_index(adj, mask)
    assert edge_index.tolist() == [[0, 3], [1, 2]]
    assert node_batch.tolist() == [0, 0, 1, 1]
    adj[1, 1, 0] = True  # slot 1 of batch 1 is padding
    with pytest.raises(ValueError, match=r"adj\[1, 1, 0\] is True but touches a padding slot"):
        dense_batch_to_edge_index(adj, mask)
    with pytest.raises(ValueError, match=r"adj must be \[B, N, N\]"):
        dense_batch_to_edge_index(adj[0], mask)
