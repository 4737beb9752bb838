"""Over-smoothing check: one Hop-Diffused Attention layer vs k stacked GAT layers.

Graph4MM's theorem: one Hop-Diffused Attention layer keeps more Dirichlet energy than k stacked
GAT layers, E_HopDiffused(X^(1)) > E_GAT(X^(k)). This script measures the relative Dirichlet
energy E(X) / ||X||_F^2 (see ``g4mm.model.dirichlet``) on random graphs with random features:

* (a) the input X ~ N(0, 1)^(N x d),
* (b) one ``HopDiffusedAttention`` layer (default init, eval, no grad), K = --hops and K = k,
  both with the same weights (only the diffusion depth differs),
* (c) k stacked ``GATConv(d, d, heads, concat=False)`` layers (default glorot init, ELU between
  layers, none after the last); GAT^k is the first k layers of one stack per seed, so the rows
  of the table follow one trajectory per graph;
* (d) the same k GAT layers with the hop-diffused layer's own skip connection, identity, around
  each: ``H <- H + GAT_l(act(H))`` (act = ELU from the second layer on). The hop-diffused layer
  is ``H + update``; without (d) the table compares a residual layer with a stack that has none.

**Trained rows** (``--train-steps``, SBM graphs only): each model (one hop-diffused layer with
K = --hops, GAT^k, GAT^k + skip) gets a linear head and is trained with Adam on node
classification of the SBM communities (features: a per-community mean plus N(0, 1) noise, half
the nodes labelled), then the energy of the representation fed to the head is measured, beside
the held-out nodes' accuracy (a representation that keeps its energy by ignoring the graph is
not what the theorem is about).

Graphs: Erdos-Renyi (mean degree ~ --mean-degree) and a stochastic block model with --blocks
equal communities and the same expected mean degree (--sbm-in-frac of it inside the block).
Each cell is mean ± std over --seeds graphs; the last columns are the fraction of graphs where
the hop-diffused layer keeps strictly more energy than GAT^k.

``--ablate-residual`` adds columns for the hop-diffused *update* alone (layer(X) - X, i.e.
W_O sum_i theta_i A^i V without the skip connection), to show how much of the gap the residual
connection carries.

Example: python bench/oversmoothing.py --seeds 20 --json /tmp/oversmoothing.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATConv
from torch_geometric.utils import erdos_renyi_graph, stochastic_blockmodel_graph, to_undirected

from g4mm.model.dirichlet import relative_dirichlet_energy
from g4mm.model.hop_attention import HopDiffusedAttention


def parse_ks(text: str) -> list[int]:
    """'2-8' or '2,4,8' -> sorted list of k >= 1."""
    ks: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = (int(t) for t in part.split("-", 1))
            ks.update(range(lo, hi + 1))
        elif part:
            ks.add(int(part))
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--ks {text!r}: need k >= 1")
    return sorted(ks)


def make_graph(kind: str, args: argparse.Namespace) -> Tensor:
    """Undirected edge_index (both directions) of one random graph from the global RNG."""
    n, deg = args.nodes, args.mean_degree
    if kind == "er":
        ei = erdos_renyi_graph(n, deg / (n - 1), directed=False)
    elif kind == "sbm":
        b = args.blocks
        size = n // b
        sizes = [size] * (b - 1) + [n - size * (b - 1)]
        p_in = args.sbm_in_frac * deg / (size - 1)
        p_out = (1.0 - args.sbm_in_frac) * deg / (n - size)
        probs = torch.full((b, b), p_out)
        probs.fill_diagonal_(p_in)
        ei = stochastic_blockmodel_graph(sizes, probs, directed=False)
    else:
        raise ValueError(f"unknown graph kind {kind!r}")
    return to_undirected(ei, num_nodes=n)


def hop_layer(args: argparse.Namespace, num_hops: int, init_seed: int) -> HopDiffusedAttention:
    torch.manual_seed(init_seed)  # same weights for every K
    return HopDiffusedAttention(args.dim, args.heads, args.alpha, num_hops).eval()


def gat_stack(args: argparse.Namespace, depth: int, init_seed: int) -> nn.ModuleList:
    torch.manual_seed(init_seed)
    layers = [GATConv(args.dim, args.dim, heads=args.heads, concat=False) for _ in range(depth)]
    return nn.ModuleList(layers).eval()


@torch.no_grad()
def run_one(kind: str, seed: int, args: argparse.Namespace) -> dict[str, object]:
    """Energies on one graph: input, hop-diffused (K=hops and K=k), and GAT after each layer."""
    normalized = args.energy == "normalized"

    def energy(h: Tensor) -> float:
        return float(relative_dirichlet_energy(h.double(), ei, normalized=normalized))

    torch.manual_seed(seed)
    ei = make_graph(kind, args)
    x = torch.randn(args.nodes, args.dim)
    init_seed = 10_000 + seed

    out: dict[str, object] = {"E_x": energy(x), "num_edges": ei.shape[1] // 2}
    hop_depths = sorted({args.hops, *args.ks})
    hop: dict[int, float] = {}
    hop_update: dict[int, float] = {}
    for depth in hop_depths:
        y = hop_layer(args, depth, init_seed).forward_sparse(x, ei)
        hop[depth] = energy(y)
        hop_update[depth] = energy(y - x)
    out["hop"], out["hop_update"] = hop, hop_update

    stack = gat_stack(args, max(args.ks), init_seed + 1)
    out["gat"] = {d: energy(h) for d, h in enumerate(gat_forward(stack, x, ei), start=1)}
    out["gat_skip"] = {
        d: energy(h) for d, h in enumerate(gat_forward(stack, x, ei, skip=True), start=1)
    }
    return out


def gat_forward(stack: nn.ModuleList, x: Tensor, ei: Tensor, skip: bool = False) -> list[Tensor]:
    """Each layer's output: ``H_l = GAT_l(act(H_{l-1}))``, or ``H_{l-1} + GAT_l(act(H_{l-1}))``
    with ``skip`` (act = ELU for l > 1, identity for the first layer)."""
    outputs, h = [], x
    for depth, conv in enumerate(stack, start=1):
        update = conv(nn.functional.elu(h) if depth > 1 else h, ei)
        h = h + update if skip else update
        outputs.append(h)
    return outputs


class Encoder(nn.Module):
    """A node encoder (hop-diffused layer or GAT stack) with a linear head, for the trained rows."""

    def __init__(self, kind: str, depth: int, args: argparse.Namespace, classes: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "hop":
            self.body = HopDiffusedAttention(args.dim, args.heads, args.alpha, args.hops)
        else:
            self.body = gat_stack(args, depth, 0).train()
        self.head = nn.Linear(args.dim, classes)

    def represent(self, x: Tensor, ei: Tensor) -> Tensor:
        if self.kind == "hop":
            return self.body.forward_sparse(x, ei)
        return gat_forward(self.body, x, ei, skip=self.kind == "gat_skip")[-1]


def community_task(seed: int, args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """An SBM graph, features ``mu_c + N(0, 1)`` (``||mu_c|| ~ --signal``), community labels,
    and a mask of the labelled half."""
    torch.manual_seed(seed)
    ei = make_graph("sbm", args)
    size = args.nodes // args.blocks
    labels = torch.clamp(torch.arange(args.nodes) // size, max=args.blocks - 1)
    means = torch.randn(args.blocks, args.dim) * args.signal / args.dim**0.5
    x = means[labels] + torch.randn(args.nodes, args.dim)
    train = torch.rand(args.nodes) < 0.5
    return x, ei, labels, train


def run_trained(seed: int, k: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Energy and held-out accuracy of each model trained ``--train-steps`` on one SBM task."""
    x, ei, labels, train = community_task(seed, args)
    normalized = args.energy == "normalized"
    out = {}
    for kind in ("hop", "gat", "gat_skip"):
        torch.manual_seed(20_000 + seed)
        model = Encoder(kind, k, args, args.blocks)
        opt = torch.optim.Adam(model.parameters(), lr=args.train_lr)
        for _ in range(args.train_steps):
            logits = model.head(model.represent(x, ei))
            loss = nn.functional.cross_entropy(logits[train], labels[train])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            h = model.represent(x, ei)
            acc = (model.head(h).argmax(-1)[~train] == labels[~train]).float().mean()
            e = relative_dirichlet_energy(h.double(), ei, normalized=normalized)
        out[kind] = {"energy": float(e), "accuracy": float(acc)}
    return out


def trained_markdown(ks: list[int], runs: dict[int, list[dict]], args: argparse.Namespace) -> str:
    head = ["k", f"E(hop-diffused, K={args.hops})", "E(GAT^k)", "E(GAT^k + skip)",
            "frac hop > GAT^k + skip", "acc hop", "acc GAT^k", "acc GAT^k + skip"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in ks:
        rs = runs[k]
        energies = {m: [r[m]["energy"] for r in rs] for m in ("hop", "gat", "gat_skip")}
        accs = {m: [r[m]["accuracy"] for r in rs] for m in ("hop", "gat", "gat_skip")}
        wins = sum(a > b for a, b in zip(energies["hop"], energies["gat_skip"], strict=True))
        cells = [str(k), *(fmt(energies[m]) for m in energies), f"{wins / len(rs):.2f}",
                 *(fmt(accs[m]) for m in accs)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return (
        f"### Trained {args.train_steps} steps on SBM community classification ({args.blocks} "
        f"blocks, N={args.nodes}, signal {args.signal}), {args.train_seeds} seeds; accuracy on "
        "the unlabelled half\n\n" + "\n".join(lines)
    )


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.4f} ± {s:.4f}"


def summarise(kind: str, runs: list[dict], args: argparse.Namespace) -> list[dict]:
    rows = []
    for k in args.ks:
        e_x = [r["E_x"] for r in runs]
        hop3 = [r["hop"][args.hops] for r in runs]
        hopk = [r["hop"][k] for r in runs]
        gat = [r["gat"][k] for r in runs]
        gat_skip = [r["gat_skip"][k] for r in runs]
        row = {
            "graph": kind,
            "k": k,
            "E_x": mean_std(e_x),
            f"E_hop_K{args.hops}": mean_std(hop3),
            "E_hop_Kk": mean_std(hopk),
            "E_gat_k": mean_std(gat),
            "E_gat_skip_k": mean_std(gat_skip),
            f"frac_hop_K{args.hops}_gt_gat": sum(a > b for a, b in zip(hop3, gat, strict=True))
            / len(runs),
            "frac_hop_Kk_gt_gat": sum(a > b for a, b in zip(hopk, gat, strict=True)) / len(runs),
            f"frac_hop_K{args.hops}_gt_gat_skip": sum(
                a > b for a, b in zip(hop3, gat_skip, strict=True)
            ) / len(runs),
            "per_seed": {
                "E_x": e_x, "hop_K": hop3, "hop_Kk": hopk, "gat_k": gat, "gat_skip_k": gat_skip
            },
        }
        if args.ablate_residual:
            upd3 = [r["hop_update"][args.hops] for r in runs]
            updk = [r["hop_update"][k] for r in runs]
            row[f"E_hop_update_K{args.hops}"] = mean_std(upd3)
            row["E_hop_update_Kk"] = mean_std(updk)
            row[f"frac_hop_update_K{args.hops}_gt_gat"] = sum(
                a > b for a, b in zip(upd3, gat, strict=True)
            ) / len(runs)
            row["per_seed"]["hop_update_K"] = upd3
            row["per_seed"]["hop_update_Kk"] = updk
        rows.append(row)
    return rows


def markdown(kind: str, rows: list[dict], runs: list[dict], args: argparse.Namespace) -> str:
    K = args.hops
    head = [
        "k",
        "E(X)",
        f"E(hop-diffused, K={K})",
        "E(hop-diffused, K=k)",
        "E(GAT^k)",
        "E(GAT^k + skip)",
        f"frac hop(K={K}) > GAT^k",
        "frac hop(K=k) > GAT^k",
        f"frac hop(K={K}) > GAT^k + skip",
    ]
    if args.ablate_residual:
        head += [f"E(hop update only, K={K})", f"frac update(K={K}) > GAT^k"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        k = row["k"]
        cells = [
            str(k),
            fmt([r["E_x"] for r in runs]),
            fmt([r["hop"][K] for r in runs]),
            fmt([r["hop"][k] for r in runs]),
            fmt([r["gat"][k] for r in runs]),
            fmt([r["gat_skip"][k] for r in runs]),
            f"{row[f'frac_hop_K{K}_gt_gat']:.2f}",
            f"{row['frac_hop_Kk_gt_gat']:.2f}",
            f"{row[f'frac_hop_K{K}_gt_gat_skip']:.2f}",
        ]
        if args.ablate_residual:
            cells += [
                fmt([r["hop_update"][K] for r in runs]),
                f"{row[f'frac_hop_update_K{K}_gt_gat']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    mean_edges = statistics.fmean(r["num_edges"] for r in runs)
    title = {"er": "Erdos-Renyi", "sbm": f"SBM ({args.blocks} blocks)"}[kind]
    return (
        f"### {title}: N={args.nodes}, mean degree {2 * mean_edges / args.nodes:.2f}, "
        f"d={args.dim}, {args.seeds} seeds, {args.energy} relative Dirichlet energy\n\n"
        + "\n".join(lines)
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Relative Dirichlet energy: one Hop-Diffused Attention layer vs k GAT layers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ks", type=parse_ks, default=parse_ks("2-8"), help="k values: '2-8', '2,4'")
    p.add_argument("--seeds", type=int, default=20, help="random graphs per graph kind")
    p.add_argument("--graphs", default="er,sbm", help="comma list of: er, sbm")
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--mean-degree", type=float, default=6.0)
    p.add_argument("--blocks", type=int, default=4, help="SBM communities")
    p.add_argument("--sbm-in-frac", type=float, default=0.8, help="SBM share of in-block degree")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--hops", type=int, default=3, help="K of the fixed hop-diffused column")
    p.add_argument(
        "--energy",
        choices=["normalized", "unnormalized"],
        default="normalized",
        help="sqrt(1+d)-normalised (Cai & Wang) or plain 1/2 sum ||x_i - x_j||^2",
    )
    p.add_argument(
        "--ablate-residual",
        action="store_true",
        help="also report the hop-diffused update without its skip connection",
    )
    p.add_argument("--train-steps", type=int, default=200,
                   help="steps of the trained rows (0: none)")  # fmt: skip
    p.add_argument("--train-ks", type=parse_ks, default=parse_ks("2,4,8"),
                   help="k values of the trained rows")  # fmt: skip
    p.add_argument("--train-seeds", type=int, default=5, help="SBM tasks of the trained rows")
    p.add_argument("--train-lr", type=float, default=5e-3, help="Adam lr of the trained rows")
    p.add_argument("--signal", type=float, default=2.0,
                   help="norm of the community means in the trained task")  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="write all numbers here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    kinds = [g.strip() for g in args.graphs.split(",") if g.strip()]
    start = time.perf_counter()
    report: dict[str, object] = {"config": {k: v for k, v in vars(args).items() if k != "json"}}
    for kind in kinds:
        runs = [run_one(kind, seed, args) for seed in range(args.seeds)]
        rows = summarise(kind, runs, args)
        print(markdown(kind, rows, runs, args), end="\n\n")
        report[kind] = rows
    if args.train_steps > 0:
        trained = {k: [run_trained(seed, k, args) for seed in range(args.train_seeds)]
                   for k in args.train_ks}  # fmt: skip
        print(trained_markdown(args.train_ks, trained, args), end="\n\n")
        report["trained"] = {str(k): v for k, v in trained.items()}
    elapsed = time.perf_counter() - start
    print(f"({elapsed:.1f} s)")
    if args.json is not None:
        report["elapsed_s"] = elapsed
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
