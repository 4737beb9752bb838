"""Where a training step's time goes: host vs device, and the top operators of each.

    python bench/profile_step.py [--batch 8] [--kind full|bucketed|random] [--steps 6]
    python bench/profile_step.py --quick      # CPU-sized shapes (CI, no GPU)

Runs :func:`g4mm.train.loop.train_loop` on the model and batches of ``bench/train_step.py``
(same shapes, random weights) and reports, per setting:

- ``ms/step`` and ``samples/s`` of the timed steps (``train_loop`` ends with one host sync);
- with ``--profile``, ``torch.profiler``'s busy time per step on the host (self CPU time of
  every operator) and on the device (self CUDA time of every kernel), and the top operators of
  each: host busy > device busy means the step is launch-bound (the GPU waits for Python),
  the reverse that it is GPU-bound. (The profiler slows the host side, so its host time is an
  upper bound.)

``--settings`` compares variants of the same step in one run: ``default`` (what training
does: frozen LM stored in bf16 on CUDA, SDPA without its cuDNN backend), ``fp32-lm`` (frozen
LM kept in fp32 under autocast), ``compile`` (``train.compile``), ``compile-all`` (and
``train.compile_scope=lm+adapter``), ``compile-forward`` (``train.compile_scope=forward``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_step
from common import cpu_threads, device_label, pick_device, print_table, sync

from g4mm.train.loop import frozen_dtype_for, train_loop

SETTINGS = ("default", "fp32-lm", "compile", "compile-all", "compile-forward")
SCOPES = {"compile": "lm", "compile-all": "lm+adapter", "compile-forward": "forward"}


@contextlib.contextmanager
def setting(name: str, model, device: torch.device):
    """Apply one setting around the timed steps and undo it afterwards."""
    frozen = "fp32" if name == "fp32-lm" else "auto"
    model.cast_frozen(frozen_dtype_for(device, "auto", frozen))
    try:
        yield
    finally:
        model.cast_frozen(torch.float32)
        model.compile_parts(False)


def run_steps(model, batches, device, steps: int, name: str = "default") -> float:
    """Seconds of ``steps`` optimizer steps of ``train_loop``; a compile setting compiles in
    the first call and stays compiled."""
    compile_lm = name in SCOPES and not model.is_compiled
    cfg = train_step.step_config(steps, compile_lm, scope=SCOPES.get(name, "lm"))
    sync(device)
    start = time.perf_counter()
    train_loop(
        model=model, batches=itertools.cycle(batches), cfg=cfg, device=device,
        report=lambda metrics, state: None, log=lambda _: None, log_every=10**9,
    )  # fmt: skip
    sync(device)
    return time.perf_counter() - start


def busy_ms(prof, steps: int, device: torch.device) -> list[float | None]:
    """[host, device] busy milliseconds per step: the sums of self times over all events
    (device None without CUDA: there is no separate device timeline)."""
    events = prof.key_averages()
    host = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    if device.type != "cuda":
        return [host, None]
    return [host, sum(e.self_device_time_total for e in events) / 1e3 / steps]


def top_ops(prof, key: str, limit: int) -> str:
    return prof.key_averages().table(sort_by=key, row_limit=limit, max_name_column_width=60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized shapes")
    p.add_argument("--batch", type=int, nargs="+", default=[8])
    p.add_argument("--kind", nargs="+", default=["full"], choices=["full", "bucketed", "random"])
    p.add_argument("--settings", nargs="+", default=["default"], choices=SETTINGS)
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=8, help="distinct batches cycled through")
    p.add_argument("--profile", action="store_true", help="print torch.profiler top operators")
    p.add_argument("--top", type=int, default=15, help="operators per profiler table")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    cpu_threads(device, 1)
    shape = train_step.QUICK if args.quick else train_step.FULL
    print(f"device: {device_label(device)}", flush=True)
    model = train_step.build_model(shape, device)
    rows = []
    for b, kind, name in itertools.product(args.batch, args.kind, args.settings):
        batches = train_step.make_batches(kind, b, args.batches, shape)
        with setting(name, model, device):
            run_steps(model, batches, device, args.warmup, name)
            seconds = run_steps(model, batches, device, args.steps)
            row = [name, b, kind, 1e3 * seconds / args.steps, b * args.steps / seconds]
            print(f"{name} b={b} {kind}: {row[3]:.1f} ms/step", flush=True)
            if args.profile:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if device.type == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                with torch.profiler.profile(activities=activities) as prof:
                    run_steps(model, batches, device, args.steps)
                row += busy_ms(prof, args.steps, device)
                print(f"-- {name} b={b} {kind}: top operators by self host time")
                print(top_ops(prof, "self_cpu_time_total", args.top))
                if device.type == "cuda":
                    print(f"-- {name} b={b} {kind}: top operators by self device time")
                    print(top_ops(prof, "self_cuda_time_total", args.top))
            rows.append(row)
    headers = ["setting", "batch", "lengths", "ms/step", "samples/s"]
    if args.profile:
        headers += ["host busy ms/step", "device busy ms/step"]
    print_table(headers, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
