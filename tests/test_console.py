"""Quiet by default, everything with -v / G4MM_LOG=debug (g4mm.console)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from ray.data import DataContext

from g4mm.console import VERBOSE_ENV, add_verbose_argument, apply_verbosity, verbose
from g4mm.pipeline.ray_runtime import configure_data_context

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_context():
    saved = DataContext.get_current().enable_progress_bars
    yield DataContext.get_current()
    DataContext.get_current().enable_progress_bars = saved


def test_ray_data_progress_is_off_unless_asked_for(monkeypatch, data_context):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    monkeypatch.delenv("RAY_DATA_DISABLE_PROGRESS_BARS", raising=False)
    assert not verbose() and configure_data_context().enable_progress_bars is False
    monkeypatch.setenv(VERBOSE_ENV, "DEBUG")
    assert verbose() and configure_data_context().enable_progress_bars is True
    monkeypatch.setenv("RAY_DATA_DISABLE_PROGRESS_BARS", "1")  # CI's switch still wins
    assert configure_data_context().enable_progress_bars is False
    assert configure_data_context(progress_bars=True).enable_progress_bars is True


def test_dash_v_exports_the_setting(monkeypatch):
    # setenv first, so that monkeypatch restores the variable's absence afterwards: a bare
    # delenv of an absent variable records nothing, and the G4MM_LOG=debug that -v exports
    # leaked into every later test's jobs (all of them verbose: the console test then saw
    # Ray Train's INFO lines and transformers' bars, in CI only, by test order)
    monkeypatch.setenv(VERBOSE_ENV, "")
    monkeypatch.delenv(VERBOSE_ENV)
    parser = argparse.ArgumentParser()
    add_verbose_argument(parser)
    apply_verbosity(parser.parse_args([]))
    assert not verbose()
    apply_verbosity(parser.parse_args(["-v"]))
    assert verbose()


@pytest.mark.parametrize("script", ["jobs/train.py", "jobs/preprocess.py", "tuning/search.py"])
def test_commands_take_dash_v(script):
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "-v, --verbose" in proc.stdout


_METRICS_IN_A_SUBPROCESS = (
    "from g4mm.eval.metrics import caption_metrics\n"
    "import os, sys\n"
    "os.write(2, b'another line on stderr\\n')\n"
    "print(caption_metrics(['a cat sat on the mat'], ['a cat sat on a mat'])['bleu1'])\n"
)


@pytest.mark.parametrize("level", ["", "debug"])
def test_the_java_tokenizer_chatter_is_held_back_unless_verbose(level):
    """Real pycocoevalcap + Java: its "PTBTokenizer tokenized N tokens" line only with -v;
    everything else on stderr (here: a line written before the tokenizer ran) still shows."""
    import os

    env = {**os.environ, VERBOSE_ENV: level}
    proc = subprocess.run([sys.executable, "-c", _METRICS_IN_A_SUBPROCESS], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip()) > 0.8
    assert "another line on stderr" in proc.stderr
    assert ("PTBTokenizer tokenized" in proc.stderr) == (level == "debug")


def test_held_back_stderr_keeps_other_lines_and_everything_on_error(monkeypatch, capfd):
    import os

    from g4mm.console import stderr_without

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with stderr_without(r"noise \d+\n"):
        os.write(2, b"noise 1\nkept\nnoise 22\n")
    assert capfd.readouterr().err == "kept\n"
    with pytest.raises(ValueError), stderr_without(r"noise \d+\n"):
        os.write(2, b"noise 3\n")
        raise ValueError
    assert capfd.readouterr().err == "noise 3\n"  # it may explain the error: kept


def test_no_test_leaves_the_verbose_setting_behind():
    """Runs after the tests above (file order): they exported G4MM_LOG=debug through -v."""
    import os

    assert VERBOSE_ENV not in os.environ
