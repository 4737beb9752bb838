"""How much the commands print: quiet by default, everything with ``-v`` or ``G4MM_LOG=debug``.

Quiet means: Ray Data's per-operator progress (redrawn by every Train worker and the split
coordinator: hundreds of lines per run) and transformers' "Loading weights" bars are off; the
commands print their own progress lines instead (``[preprocess] ...``, ``step N/M ... eta``).
The setting travels to Ray workers as the environment variable, which a locally started Ray
passes on to every worker it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

__all__ = [
    "VERBOSE_ENV",
    "add_verbose_argument",
    "apply_verbosity",
    "quiet_transformers_bars",
    "stderr_without",
    "verbose",
]

#: ``debug``: print everything (Ray Data progress, model-loading bars).
VERBOSE_ENV = "G4MM_LOG"


def verbose() -> bool:
    """Whether ``G4MM_LOG=debug`` (or ``-v``) asked for everything."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() == "debug"


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose``: the same as ``G4MM_LOG=debug``."""
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help=f"print everything: Ray Data progress, model-loading bars ({VERBOSE_ENV}=debug)",
    )  # fmt: skip


def apply_verbosity(args: argparse.Namespace) -> None:
    """Export ``G4MM_LOG=debug`` when ``-v`` was given (before Ray starts its workers)."""
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "debug"


def quiet_transformers_bars() -> None:
    """transformers' bars off unless verbose: 5.x draws "Loading weights" per model load
    (every Ray worker loads the backbones: dozens a run) and "Converting and de-quantizing GGUF
    tensors" per GGUF read."""
    if not verbose():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@contextlib.contextmanager
def stderr_without(pattern: str) -> Iterator[None]:
    """Hold back what matches the regex ``pattern`` from this process's stderr (file-descriptor
    level, so subprocesses too) unless verbose; everything else is written back when the block
    ends, the matched text included if the block raised (it may explain the error).

    For chatter nobody can switch off: pycocoevalcap's Java tokenizer prints "PTBTokenizer
    tokenized 65 tokens at 924.58 tokens per second." on every evaluation (every rank, every
    ``eval_every``), with no option to stop it.
    """
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            if not failed:
                text = re.sub(pattern, "", text)
            if text:
                sys.stderr.write(text)
                sys.stderr.flush()
