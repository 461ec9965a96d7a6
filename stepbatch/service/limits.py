"""What one client or one request may cost: request rates per client address or account (token
buckets), and the work a read route may do (its own threads, a cap on reads at once, a deadline
and a cancel flag it checks as it goes)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
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


class ReadCancelled(Exception):
    """The client left before its read was done."""


class ReadTimedOut(Exception):
    """The read went past its deadline."""


class ReadBudget:
    """A read's deadline and cancel flag, checked between its steps (a step is bounded on its own:
    a chunk of keys, one database call under `pymongo.timeout`)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline_s = time.monotonic() + seconds
        self.cancelled = threading.Event()

    def remaining_s(self) -> float:
        return max(self.deadline_s - time.monotonic(), 0.001)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise ReadCancelled()
        if time.monotonic() > self.deadline_s:
            raise ReadTimedOut()


class ReadGate:
    """The read routes' own threads (so no read can hold up the batcher's or the health checks'),
    and at most `max_waiting` reads admitted at once; past that a read is refused at once."""

    def __init__(self, threads: int = 4, max_waiting: int = 64):
        self.max_waiting = max_waiting
        self.admitted = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="stepbatch-read")

    def admit(self) -> bool:
        if self.admitted >= self.max_waiting:
            return False
        self.admitted += 1
        return True

    def release(self) -> None:
        self.admitted -= 1

    async def run(self, work, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, work, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
