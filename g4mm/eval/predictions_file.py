"""Read a predictions file (JSON lines) to score it without a model.

One JSON object per line: ``{"prediction": str, "reference": str | [str, ...], ...}``; other
fields are ignored, blank lines skipped. The ``predictions.jsonl`` every run writes is such a
file, and so is any other system's output put in that shape (the official code's included).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["PredictionsFileError", "read_predictions"]


class PredictionsFileError(ValueError):
    """A predictions file that cannot be scored, naming the file and line."""


def _reference(value: object, where: str) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise PredictionsFileError(
        f"{where}: 'reference' must be a string or a non-empty list of strings, got {value!r}"
    )


def read_predictions(path: str | os.PathLike[str]) -> tuple[list[str], list[str | list[str]]]:
    """``(predictions, references)`` of every non-blank line of ``path``, in file order.

    Raises:
        PredictionsFileError: no such file, no lines, a line that is not a JSON object, or one
            without a string ``prediction`` or a valid ``reference`` (naming its line number).
    """
    file = Path(path)
    if not file.is_file():
        raise PredictionsFileError(f"{file}: no such predictions file")
    predictions: list[str] = []
    references: list[str | list[str]] = []
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{file}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PredictionsFileError(f"{where}: not JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise PredictionsFileError(f"{where}: expected a JSON object, got {line.strip()!r}")
            if not isinstance(record.get("prediction"), str):
                raise PredictionsFileError(
                    f"{where}: no string 'prediction' (has {sorted(record)})"
                )
            if "reference" not in record:
                raise PredictionsFileError(f"{where}: no 'reference' (has {sorted(record)})")
            predictions.append(record["prediction"])
            references.append(_reference(record["reference"], where))
    if not predictions:
        raise PredictionsFileError(f"{file}: empty, no predictions to score")
    return predictions, references
