"""Fetch the images a dataset only names (WikiWeb2M ships URLs) into an images directory that
preprocessing reads (``manifest.csv``), on Ray Data.

- :func:`~g4mm.fetch.run.fetch_images`: the whole job (see that module's stages).
- :func:`~g4mm.fetch.download.fetch_url`: one URL, retried, checked, written atomically.
- :class:`~g4mm.fetch.rate.HostRateLimiter`: the per-host request rate of a run.
"""

from __future__ import annotations

from g4mm._lazy import lazy_exports

_EXPORTS = {
    "FetchOptions": "g4mm.fetch.run",
    "FetchPolicy": "g4mm.fetch.download",
    "HostRateLimiter": "g4mm.fetch.rate",
    "fetch_images": "g4mm.fetch.run",
    "fetch_url": "g4mm.fetch.download",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
