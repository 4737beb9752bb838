"""The README and docs/ say only what runs: every command's script exists and takes the flags
the docs give it, and every repository path they name exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _bash_lines(page: Path) -> list[str]:
    """Command lines of the page's bash blocks (continuations joined, comments dropped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        joined = block.replace("\\\n", " ")
        lines += [line.split("  #")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _python_commands() -> list[tuple[str, list[str]]]:
    """``(page, argv)`` of every ``python SCRIPT ...`` in a bash block (after ``&&`` too)."""
    found = []
    for page in PAGES:
        for line in _bash_lines(page):
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            words, parts = list(lexer), [[]]
            for word in words:
                if word in ("&&", ";", "||", "|", "&"):
                    parts.append([])
                elif not (not parts[-1] and re.fullmatch(r"[A-Z_]+=\S*", word)):  # env
                    parts[-1].append(word)
            for part in parts:
                if len(part) > 1 and part[0] in ("python", "python3"):
                    if part[1] == "-m" and part[2:3] != ["g4mm.model.tiny"]:
                        continue  # pip, venv, pytest: not ours
                    found.append((page.relative_to(ROOT).as_posix(), part[1:]))
    return found


COMMANDS = [pytest.param(page, argv, id=f"{page}: {' '.join(argv)[:60]}")
            for page, argv in _python_commands()]  # fmt: skip


@cache
def _help(script: tuple[str, ...]) -> str:
    proc = subprocess.run([sys.executable, *script, "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_docs_have_commands():
    scripts = {argv[0] for _, argv in _python_commands()}
    assert {"jobs/train.py", "jobs/evaluate.py", "jobs/inspect.py", "tuning/search.py"} <= scripts


@pytest.mark.parametrize(("page", "argv"), COMMANDS)
def test_every_documented_command_exists_and_takes_its_flags(page, argv):
    script = tuple(argv[:2]) if argv[0] == "-m" else (argv[0],)
    if script[0] != "-m":
        assert (ROOT / script[0]).is_file(), f"{page}: {script[0]} does not exist"
    text = _help(script)
    for flag in (w.split("=")[0] for w in argv if w.startswith("--")):
        assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", text), f"{page}: {flag} unknown"


PATH = re.compile(r"`((?:g4mm|jobs|tuning|cluster|bench|docs|tests|\.ci)/[\w./-]+)`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_repository_path_named_exists(page):
    missing = [p for p in PATH.findall(page.read_text()) if "<" not in p
               and not (ROOT / p.rstrip(".")).exists()]  # fmt: skip
    assert not missing, f"{page.name} names paths that do not exist: {missing}"
    assert "../shared" not in page.read_text(), f"{page.name} points outside the repository"
