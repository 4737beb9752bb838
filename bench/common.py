"""Small helpers shared by the bench scripts: device info, timing, matmul peak, tables.

Ray-free (torch only), so every bench that imports it runs on a bare GPU box.
"""

from __future__ import annotations

import importlib.util
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` from anywhere imports the g4mm checkout
    sys.path.insert(0, str(ROOT))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_threads(device: torch.device, threads: int | None) -> None:
    """On CPU, run torch with ``threads`` threads (the benches default to 1). On a machine whose
    cores are shared with other work, two OpenMP threads stall at every barrier while one is
    descheduled: a tiny step measured 0.01 s with one thread and 0.06-1.8 s with two."""
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_label(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` or ``cpu (N threads, <processor>)``, plus the torch version."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine()
        name = f"cpu ({torch.get_num_threads()} threads, {cpu})"
    return f"{name}; torch {torch.__version__}"


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Seconds per call: ``warmup`` calls, then the mean over ``repeats`` calls between two
    device synchronisations (one per measurement, not per call)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Measured dense matmul rate (TFLOP/s) of an ``n x n @ n x n`` product in ``dtype``: the
    denominator of every MFU this repo prints (measured in the same run, never a datasheet)."""
    return gemm_tflops(device, dtype, n, n, n, repeats)


def gemm_tflops(
    device: torch.device, dtype: torch.dtype, m: int, k: int, n: int, repeats: int = 10
) -> float:
    """Measured rate (TFLOP/s) of one ``(m, k) @ (k, n)`` product in ``dtype`` (2 m k n FLOPs)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(m, k, device=device, dtype=dtype, generator=gen)
    b = torch.randn(k, n, device=device, dtype=dtype, generator=gen)
    seconds = timed(lambda: a @ b, device, repeats, warmup=2)
    return 2 * m * k * n / seconds / 1e12


def load_path(path: str | Path, name: str) -> ModuleType:
    """Import a Python file by path (the anchor script lives outside the repository)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (pass --anchor PATH)")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers to short strings (3 significant digits by default); None -> '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print (and return) a Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
