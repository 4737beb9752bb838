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


def _commands() -> list[list[str]]:
    """Every script with a ``__main__`` block under the command folders, plus module CLIs."""
    scripts = sorted(
        path.relative_to(ROOT).as_posix()
        for folder in ("jobs", "tuning", "cluster", "bench", "bench/gpu")
        for path in (ROOT / folder).glob("*.py")
        if '__name__ == "__main__"' in path.read_text(encoding="utf-8")
    )
    return [[script] for script in scripts] + [["-m", "g4mm.model.tiny"]]


COMMANDS = _commands()


def test_the_command_list_is_found():
    found = {c[0] for c in COMMANDS}
    assert {"jobs/train.py", "tuning/search.py", "bench/gpu/profile_step.py"} <= found
    assert "bench/common.py" not in found and "bench/gpu/gpu_fixtures.py" not in found


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[-1])
def test_every_command_has_help(command):
    proc = subprocess.run(
        [sys.executable, *command, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


CONFIG_COMMANDS = [
    c for c in COMMANDS
    if c[0] != "-m" and "add_config_arguments" in (ROOT / c[0]).read_text(encoding="utf-8")
]  # fmt: skip


def test_the_config_commands_are_found():
    assert {"jobs/train.py", "tuning/search.py"} <= {c[0] for c in CONFIG_COMMANDS}


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: c[-1])
def test_a_bad_config_value_is_a_usage_error_naming_the_field(command, tmp_path):
    out = str(tmp_path / "out")
    where = ["--prep", out] if command == ["jobs/inspect.py"] else ["--output", out]
    proc = subprocess.run(
        [sys.executable, *command, "--set", "model.alpha=2", *where],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "model.alpha = 2" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before it writes anything


def test_jobs_inspect_does_not_shadow_the_standard_librarys_inspect():
    """``python jobs/<job>.py`` puts jobs/ first on sys.path, where inspect.py sits: importing
    ``inspect`` from there must still give the standard library's module."""
    code = (
        "import sys; sys.path.insert(0, 'jobs'); import inspect, dataclasses; "
        "assert callable(inspect.signature) and 'jobs' not in inspect.__file__, inspect.__file__"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
