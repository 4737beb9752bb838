"""Promises about the project's shape: Ray-free library parts, CLIs with --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["g4mm.model", "g4mm.graph", "g4mm.data", "g4mm.eval"])
def test_library_parts_do_not_import_ray(package):
    code = (
        f"import sys, {package}; "
        "leaks = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')); "
        "print(leaks); sys.exit(1 if leaks else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["jobs/train.py"],
        ["jobs/preprocess.py"],
        ["jobs/evaluate.py"],
        ["tuning/search.py"],
        ["cluster/simulate.py"],
        ["bench/oversmoothing.py"],
        ["bench/pipeline.py"],
        ["bench/gpu_check.py"],
        ["bench/gpu_all.py"],
        ["bench/train_step.py"],
        ["bench/diffusion.py"],
        ["bench/generate.py"],
        ["-m", "g4mm.model.tiny"],
    ],
)
def test_every_command_has_help(command):
    proc = subprocess.run(
        [sys.executable, *command, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
