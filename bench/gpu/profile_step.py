"""Where a training step's time goes: host vs device, kernel categories, top operators.

    python bench/profile_step.py [--batch 8] [--kind full|bucketed|random] [--steps 6]
        [--settings default compile-all-step-graph ...] [--profile]
    python bench/profile_step.py --quick      # CPU-sized shapes (CI, no GPU)

Times :func:`g4mm.train.loop.train_loop` on the model and batches of ``bench/train_step.py``
(same shapes, random weights, :func:`train_step.time_ours`: warm-up, compilation and step-graph
recording happen before the timed window) and reports, per setting:

- ``ms/step`` and ``samples/s`` of the timed steps;
- with ``--profile``, ``torch.profiler`` over the timed steps only: the host's busy time per
  step (self CPU time of every operator), the device's (the summed durations of the kernels,
  copies and fills the profiler saw; kernels replayed from CUDA graphs where it can see them,
  and it says when it saw almost none) and its idle share of the
  step, the kernels per step, and the device time by category (matmul, attention, norm /
  softmax / loss, the update, copies and fills, inductor's fused kernels, the rest), then the
  top operators by host and by device time. Host busy > device busy means the step is
  launch-bound; device idle near 0 that it is GPU-bound, and the categories say on what.
  Without CUDA the categories split the host's operator time instead. (The profiler slows the
  host side, so host times are upper bounds.)

``--settings`` compares variants of the same step in one run (:data:`SETTINGS`): ``default``
(what training does: frozen LM stored in bf16 on CUDA, SDPA without its cuDNN backend),
``fp32-lm`` (frozen LM kept in fp32 under autocast), ``compile`` (``train.compile``),
``compile-all`` (and ``train.compile_scope=lm+adapter``), ``compile-forward``
(``train.compile_scope=forward``), ``step-graph`` (``train.step_graph``),
``compile-all-step-graph`` (both: the fastest batch-8 step measured), and the same with
``train.cudnn_attention`` (``-cudnn``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the user benchmarks in bench/
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/gpu first

import train_step
from common import cpu_threads, device_label, pick_device, print_table

#: setting name -> :class:`train_step.Plan` fields (besides the batch kind)
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "fp32-lm": {"frozen": "fp32"},
    "compile": {"compile_lm": True, "scope": "lm"},
    "compile-all": {"compile_lm": True, "scope": "lm+adapter"},
    "compile-forward": {"compile_lm": True, "scope": "forward"},
    "step-graph": {"step_graph": True},
    "compile-all-step-graph": {"compile_lm": True, "scope": "lm+adapter", "step_graph": True},
    "compile-all-step-graph-cudnn": {
        "compile_lm": True, "scope": "lm+adapter", "step_graph": True, "cudnn": True,
    },
}  # fmt: skip

#: (category, name fragments): a kernel or operator belongs to the first category one of
#: whose fragments its lower-cased name contains (attention before matmul: the memory-efficient
#: attention kernels are CUTLASS kernels; norms before inductor's fused kernels)
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("flash", "fmha", "sdpa", "attention")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "splitk", "aten::mm", "aten::addmm",
                "aten::bmm", "triton_tem")),
    ("update (clip, AdamW)", ("adam", "multi_tensor", "foreach", "lpnorm")),
    ("norm, softmax, loss", ("layer_norm", "layernorm", "softmax", "nll_loss", "cross_entropy")),
    ("copy, fill", ("memcpy", "memset", "copy", "fill", "zero_")),
    ("fused by inductor", ("triton_",)),
)  # fmt: skip
OTHER = "other (elementwise, gathers, ...)"


def category(name: str) -> str:
    """The :data:`CATEGORIES` entry of a kernel or operator name, else :data:`OTHER`."""
    lowered = name.lower()
    for label, fragments in CATEGORIES:
        if any(fragment in lowered for fragment in fragments):
            return label
    return OTHER


def timed_events(prof: torch.profiler.profile, device: torch.device) -> list[tuple[str, float]]:
    """(name, microseconds) of every kernel, copy and fill the device ran (CUDA), or of every
    host operator's self time (CPU: there is no device timeline). User annotations on the
    device timeline (``Optimizer.step#AdamW.step``) span kernels already counted: left out,
    as torch's own tables do."""
    from torch.autograd import DeviceType

    if device.type == "cuda":
        return [(e.name, e.device_time_total) for e in prof.events()
                if e.device_type == DeviceType.CUDA
                and not getattr(e, "is_user_annotation", False)]  # fmt: skip
    return [(e.name, e.self_cpu_time_total) for e in prof.events()
            if e.device_type == DeviceType.CPU]  # fmt: skip


def breakdown(events: list[tuple[str, float]], steps: int) -> list[list[Any]]:
    """Rows ``[category, count/step, ms/step, share]`` of ``events``, largest first."""
    count: dict[str, int] = defaultdict(int)
    micros: dict[str, float] = defaultdict(float)
    for name, us in events:
        label = category(name)
        count[label] += 1
        micros[label] += us
    total = sum(micros.values()) or 1.0
    rows = [[label, count[label] / steps, micros[label] / 1e3 / steps, micros[label] / total]
            for label in micros]  # fmt: skip
    return sorted(rows, key=lambda row: -row[2])


def host_busy_ms(prof: torch.profiler.profile, steps: int) -> float:
    """Self CPU time of every host event, per step (an upper bound: the profiler adds to it)."""
    return sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3 / steps


def top_ops(prof, key: str, limit: int) -> str:
    return prof.key_averages().table(sort_by=key, row_limit=limit, max_name_column_width=60)


def profile_setting(model, batches, device, name: str, kind: str, args) -> dict[str, Any]:
    """One setting's timed steps (profiled with ``--profile``): ms/step, samples/s and, when
    profiled, host and device busy time per step and the category breakdown."""
    plan = train_step.Plan(kind, **SETTINGS[name])
    prof = None
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(activities=activities)
    res = train_step.time_ours(model, batches, device, args.steps, args.warmup, plan, prof)
    ms = 1e3 * res["seconds"] / args.steps
    out = {"setting": name, "batch": batches[0].batch_size, "kind": kind, "ms_step": ms,
           "samples_s": res["samples"] / res["seconds"], "note": res["note"]}  # fmt: skip
    if prof is None:
        return out
    events = timed_events(prof, device)
    out["host_ms"] = host_busy_ms(prof, args.steps)
    if device.type == "cuda":
        out["device_ms"] = sum(us for _, us in events) / 1e3 / args.steps
        out["device_idle"] = max(0.0, 1 - out["device_ms"] / ms)
        out["kernels"] = len(events) / args.steps
    out["categories"] = breakdown(events, args.steps)
    out["top_host"] = top_ops(prof, "self_cpu_time_total", args.top)
    if device.type == "cuda":
        out["top_device"] = top_ops(prof, "self_cuda_time_total", args.top)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized shapes")
    p.add_argument("--batch", type=int, nargs="+", default=[8])
    p.add_argument("--kind", nargs="+", default=["full"], choices=["full", "bucketed", "random"])
    p.add_argument("--settings", nargs="+", default=["default"], choices=list(SETTINGS))
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=8, help="distinct batches cycled through")
    p.add_argument(
        "--profile", action="store_true", help="profile: busy times, categories, top operators"
    )
    p.add_argument("--top", type=int, default=15, help="operators per profiler table")
    p.add_argument("--device", default="auto")
    return p


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (batch, kind, setting) result, printing each profile as it completes."""
    device = pick_device(args.device)
    cpu_threads(device, 1)
    shape = train_step.QUICK if args.quick else train_step.FULL
    print(f"device: {device_label(device)}", flush=True)
    model = train_step.build_model(shape, device)
    results = []
    for b, kind, name in itertools.product(args.batch, args.kind, args.settings):
        batches = train_step.make_batches(kind, b, args.batches, shape)
        res = profile_setting(model, batches, device, name, kind, args)
        print(f"{name} b={b} {kind}: {res['ms_step']:.1f} ms/step", flush=True)
        if res.get("device_ms") is not None and res["device_ms"] < 0.05 * res["ms_step"]:
            print(
                f"-- {name}: the profiler saw almost no device work; kernels replayed "
                "from CUDA graphs may not be traced on this stack (categories incomplete)"
            )
        if "categories" in res:
            what = "device kernel" if device.type == "cuda" else "host operator"
            print(f"-- {name} b={b} {kind}: {what} time by category")
            print_table(
                ["category", "count/step", "ms/step", "share"],
                [[c, n, ms, f"{share:.1%}"] for c, n, ms, share in res["categories"]],
            )
            print(f"-- {name} b={b} {kind}: top operators by self host time")
            print(res["top_host"])
            if "top_device" in res:
                print(f"-- {name} b={b} {kind}: top operators by self device time")
                print(res["top_device"])
        results.append(res)
    return results


def summary_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    headers = ["setting", "batch", "lengths", "ms/step", "samples/s", "host busy ms/step",
               "device busy ms/step", "device idle", "kernels/step"]  # fmt: skip
    rows = []
    for r in results:
        idle = r.get("device_idle")
        rows.append([r["setting"], r["batch"], r["kind"], r["ms_step"], r["samples_s"],
                     r.get("host_ms"), r.get("device_ms"),
                     None if idle is None else f"{idle:.0%}", r.get("kernels")])  # fmt: skip
    return headers, rows


def main(argv: list[str] | None = None) -> int:
    results = run(parser().parse_args(argv))
    print_table(*summary_rows(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
