"""A per-host request rate shared by every downloader of a run (one Ray actor holds it).

Each host has a next free slot ``t_h``. :meth:`HostRateLimiter.reserve` hands out
``max(now, t_h)`` and advances ``t_h`` by ``1 / rate``; the caller sleeps until its slot. So
over any window of ``T`` seconds a host gets at most ``rate * T + 1`` requests, however many
tasks and threads ask, on however many nodes. :meth:`~HostRateLimiter.penalize` moves ``t_h``
by ``seconds``, and to at least ``now + seconds`` (after a 429: the whole run backs off from
that host, not just the thread that was told; requests already given a slot still go).
"""

from __future__ import annotations

import time

__all__ = ["HostRateLimiter"]


class HostRateLimiter:
    """Slots of ``1 / rate_per_s`` seconds per host; ``rate_per_s <= 0`` means unlimited."""

    def __init__(self, rate_per_s: float) -> None:
        self.interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self.next_free: dict[str, float] = {}

    def reserve(self, host: str) -> float:
        """Seconds the caller must wait before its request to ``host`` (0 when its slot is
        now); the slot is taken."""
        now = time.monotonic()
        slot = max(now, self.next_free.get(host, now))
        self.next_free[host] = slot + self.interval
        return slot - now

    def penalize(self, host: str, seconds: float) -> None:
        """Every slot of ``host`` not yet handed out moves ``seconds`` later, and none is
        before ``seconds`` from now (slots already handed out are the callers' to keep)."""
        now = time.monotonic()
        self.next_free[host] = max(self.next_free.get(host, now) + seconds, now + seconds)
