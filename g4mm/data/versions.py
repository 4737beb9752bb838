"""Versions of what the project generates, importable without torch or PIL (the preprocessing
driver's cache key reads them before anything is loaded)."""

from __future__ import annotations

#: Bump when the synthetic generators (g4mm.data.synthetic) write different files for the same
#: parameters: the preprocessing cache key and the raw files' marker include it.
GENERATOR_VERSION = 3  # 2: section order shuffled in the record, shorter texts; 3: products
# with three shape groups and three held-out classes
