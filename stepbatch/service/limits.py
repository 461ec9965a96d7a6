"""Per-client request rates: token buckets keyed by client address or by account."""

from __future__ import annotations

import collections
import math
import threading
import time


class TokenBuckets:
    """`rate` requests per second with bursts of up to `burst`, per key. At most `max_keys` buckets
    are kept (the least recently used goes first), so a flood of distinct keys cannot grow memory."""

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 100_000, clock=time.monotonic):
        if rate <= 0:
            raise ValueError(f"a rate limit must be positive, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1.0))
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when a request of `key` may go now (one token is taken), else the seconds until it may."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
