"""Per-key rate limits: a token bucket per API key, 429 with ``Retry-After`` when empty.

Each key may make ``--rate-per-s`` requests a second on average and ``--rate-burst`` at
once (``HCP_API_RATE_PER_S``, ``HCP_API_RATE_BURST``; a rate of 0 turns limiting off).
The check runs after authentication, so the bucket is the key's, not the address's;
refusals are counted per route in ``hcp_api_rate_limited_total{route}``. Buckets live in
the process: with several API processes each enforces its own share.
"""

from __future__ import annotations

import math
import time

from prometheus_client import CollectorRegistry, Counter

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token buckets keyed by key id; ``check`` returns 0 or the seconds to wait."""

    def __init__(self, rate_per_s: float, burst: int, registry: CollectorRegistry) -> None:
        self.rate = float(rate_per_s)
        self.burst = max(1, int(burst))
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self.limited = Counter("hcp_api_rate_limited", "Requests refused with 429 per route",
                               ["route"], registry=registry)

    def take(self, key_id: str) -> bool:
        """Spend one of the key's tokens if it has one; refusals are not counted here."""
        if self.rate <= 0:
            return True
        now = time.monotonic()
        tokens, at = self._buckets.get(key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return True
        self._buckets[key_id] = (tokens, now)
        if len(self._buckets) > 100_000:  # made-up keys never get here (401 first)
            self._buckets.clear()
        return False

    def check(self, key_id: str, route: str) -> float:
        """0 when the request may go on, else the seconds to wait (the refusal is counted)."""
        if self.take(key_id):
            return 0.0
        self.limited.labels(route).inc()
        tokens = self._buckets.get(key_id, (0.0, 0.0))[0]
        return max(1.0, math.ceil((1.0 - tokens) / self.rate))
