"""Bad input as one clear line: which input is wrong and why, without a traceback.

The readers raise ``FileNotFoundError`` / ``ValueError`` naming the file and field; from a Ray
task they arrive wrapped in a ``RayTaskError`` (which is also an instance of the original
class) whose text is the remote traceback. The jobs print :func:`input_error_message` of it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["INPUT_ERRORS", "check_input_dir", "input_error_message"]

#: What the readers raise for bad input (a missing file, a malformed field).
INPUT_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError)


def input_error_message(exc: BaseException) -> str:
    """The reader's own message: the cause of a Ray task error, else the exception itself."""
    cause = getattr(exc, "cause", None)
    return str(cause if isinstance(cause, BaseException) else exc)


def check_input_dir(dataset: str, path: str | None) -> str | None:
    """Why ``path`` cannot be ``dataset``'s input directory (MM-GRAPH, parquet), or None."""
    if path is None:
        return f"--input DIR is required for --dataset {dataset}"
    where = Path(path)
    if not where.exists():
        return f"--input {path}: no such file or directory"
    if not where.is_dir():
        return f"--input {path}: not a directory ({dataset} input is a directory of files)"
    if not any(where.iterdir()):
        return f"--input {path}: the directory is empty"
    return None
