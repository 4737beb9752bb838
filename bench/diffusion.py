"""Dense vs sparse hop diffusion: time and peak memory as N and |E| grow, showing O(K |E| d).

One :class:`g4mm.model.HopDiffusedAttention` layer (forward, no grad) over one random graph of N
nodes and |E| directed edges (mean in-degree |E| / N), width d, K propagations:

- ``sparse``: ``forward_sparse(x, edge_index)``: scores on the |E'| = |E| + N edges (self-loops
  added), K scatter propagations: O(K |E'| d) time, O(|E'| d) memory;
- ``dense``: ``forward(x[None], adj)`` with the (1, N, N) adjacency: O(K N^2 d) time and
  O(heads N^2) memory; it is skipped (and the table says so) where its score tensors alone
  would pass the memory budget.

Columns: time per forward (median), peak memory above the inputs, and time normalised by the
model's work: ``ns/(K E' d)`` should stay flat for ``sparse`` as the graph grows (linear in
edges, not in N^2); ``ns/(K N^2 d)`` is the dense path's own normalisation.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above what the inputs hold; on CPU
each measurement runs in a forked child that resets its resident-set high-water mark after
building the inputs (``/proc/self/clear_refs``) and reports ``VmHWM - VmRSS`` after one forward.

Usage:
    python bench/diffusion.py [--device cuda] [--json PATH]
    python bench/diffusion.py --quick        # small sizes, seconds on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_threads, device_label, pick_device, print_table, sync

from g4mm.model import HopDiffusedAttention

HEADERS = [
    "impl",
    "N",
    "E",
    "mean deg",
    "time ms",
    "peak MiB",
    "ns/(K E' d)",
    "ns/(K N^2 d)",
    "note",
]

# (N, mean in-degree): a node sweep at degree 8, then an edge sweep at fixed N
CPU_SIZES = [
    (1_000, 8),
    (4_000, 8),
    (16_000, 8),
    (64_000, 8),
    (125_000, 8),
    (16_000, 2),
    (16_000, 32),
]
QUICK_SIZES = [(500, 8), (2_000, 8), (8_000, 8), (8_000, 32)]
GPU_SIZES = [
    (2_000, 8),
    (8_000, 8),
    (32_000, 8),
    (128_000, 8),
    (512_000, 8),
    (128_000, 2),
    (128_000, 32),
]


def dense_bytes(n: int, heads: int) -> int:
    """Working set of the dense path: ~4 fp32 (heads, N, N) score tensors + 3 N^2 bool masks."""
    return 4 * 4 * heads * n * n + 3 * n * n


def _read_status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(
    impl: str,
    n: int,
    degree: int,
    dim: int,
    heads: int,
    hops: int,
    repeats: int,
    device: torch.device,
) -> dict[str, Any]:
    """Time (median of ``repeats``) and peak memory of one forward; runs in the calling process."""
    torch.manual_seed(0)
    layer = HopDiffusedAttention(dim, num_heads=heads, alpha=0.1, num_hops=hops).to(device).eval()
    x = torch.randn(n, dim, device=device)
    edges = torch.randint(0, n, (2, n * degree), device=device)
    if impl == "sparse":
        fn = lambda: layer.forward_sparse(x, edges)  # noqa: E731
    else:
        adj = torch.zeros(1, n, n, dtype=torch.bool, device=device)
        adj[0, edges[1], edges[0]] = True
        xb = x[None]
        fn = lambda: layer(xb, adj)  # noqa: E731
    with torch.no_grad():
        if device.type == "cuda":
            sync(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            sync(device)
            peak = torch.cuda.max_memory_allocated(device) - base
        else:
            reset = _reset_peak_rss()
            base = _read_status("VmRSS") if reset else None
            fn()
            hwm = _read_status("VmHWM")
            peak = hwm - base if (reset and hwm is not None and base is not None) else None
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_bytes": peak}


def _child(conn, *args) -> None:
    try:
        conn.send(measure(*args))
    except BaseException as err:  # report, never hang the parent
        conn.send({"error": f"{type(err).__name__}: {err}"})
    finally:
        conn.close()


def measure_isolated(*args) -> dict[str, Any]:
    """``measure`` in a forked child on CPU (a fresh resident-set high-water mark per row)."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, *args))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = {"error": f"child died (exit code {proc.exitcode}; out of memory?)"}
    proc.join()
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(args.device)
    cpu_threads(device, args.threads)
    on_gpu = device.type == "cuda"
    sizes = QUICK_SIZES if args.quick else (GPU_SIZES if on_gpu else CPU_SIZES)
    dim = args.dim or (256 if on_gpu else 64)
    heads = args.heads or (8 if on_gpu else 4)
    hops = args.hops
    if args.dense_budget_gib is not None:
        budget = args.dense_budget_gib * 2**30
    elif on_gpu:
        budget = 0.5 * torch.cuda.mem_get_info(device)[0]
    else:
        budget = 2 * 2**30
    meta = {
        "device": device_label(device),
        "dim": dim,
        "heads": heads,
        "K": hops,
        "dense_budget_gib": budget / 2**30,
    }
    print(
        f"device: {meta['device']}; d={dim}, heads={heads}, K={hops}, forward only (no grad), "
        f"dense budget {budget / 2**30:.1f} GiB",
        flush=True,
    )
    rows = []
    for n, degree in sizes:
        for impl in ("sparse", "dense"):
            edges = n * degree
            row: dict[str, Any] = {"impl": impl, "n": n, "edges": edges, "degree": degree}
            if impl == "dense" and dense_bytes(n, heads) > budget:
                row["note"] = f"skipped: needs ~{dense_bytes(n, heads) / 2**30:.1f} GiB"
                rows.append(row)
                continue
            repeats = args.repeats or (3 if edges * dim > 2e7 else 5)
            call = (impl, n, degree, dim, heads, hops, repeats, device)
            res = measure(*call) if on_gpu else measure_isolated(*call)
            if "error" in res:
                row["note"] = res["error"][:100]
            else:
                sec = res["seconds"]
                row.update(
                    ms=sec * 1e3,
                    peak_mib=None if res["peak_bytes"] is None else res["peak_bytes"] / 2**20,
                    ns_edge=sec * 1e9 / (hops * (edges + n) * dim),
                    ns_dense=sec * 1e9 / (hops * n * n * dim) if impl == "dense" else None,
                    note="",
                )
            rows.append(row)
            print(
                f"{impl} N={n} E={edges}: {row.get('ms', float('nan')):.2f} ms "
                f"{row.get('note', '')}",
                flush=True,
            )
            if on_gpu:
                torch.cuda.empty_cache()
    sparse = [r for r in rows if r["impl"] == "sparse" and r.get("ms")]
    sweep = sorted((r for r in sparse if r["degree"] == 8), key=lambda r: r["edges"])
    if len(sweep) >= 2:
        top = sweep[-3:]  # the largest graphs: past the caches, where the asymptotics show
        meta["sparse_slope"] = loglog_slope(
            [r["edges"] + r["n"] for r in top], [r["ms"] for r in top]
        )
        meta["sparse_slope_edges"] = (top[0]["edges"], top[-1]["edges"])
    return {"meta": meta, "rows": rows}


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x: 1 for linear growth, 2 for quadratic."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    var = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / var if var else 0.0


def table_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            r["impl"],
            r["n"],
            r["edges"],
            r["degree"],
            r.get("ms"),
            r.get("peak_mib"),
            r.get("ns_edge"),
            r.get("ns_dense"),
            r.get("note", ""),
        ]
        for r in rows
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (seconds on a CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dim", type=int, help="node width d (default 64 CPU, 256 GPU)")
    p.add_argument("--heads", type=int, help="attention heads (default 4 CPU, 8 GPU)")
    p.add_argument("--hops", type=int, default=3, help="K propagations (default 3)")
    p.add_argument("--repeats", type=int, help="timed forwards per row (median; default 3-5)")
    p.add_argument(
        "--dense-budget-gib",
        type=float,
        help="skip dense past this working set (default 2 CPU, half free GPU)",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--json", type=Path, help="also write rows + metadata here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = run(args)
    print_table(HEADERS, table_rows(result["rows"]))
    meta = result["meta"]
    if "sparse_slope" in meta:
        lo, hi = meta["sparse_slope_edges"]
        print(
            f"sparse time ~ |E'|^{meta['sparse_slope']:.2f} (log-log slope, mean degree 8, "
            f"|E| {lo:,} -> {hi:,}; 1 = linear in edges)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
