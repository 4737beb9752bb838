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
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
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
