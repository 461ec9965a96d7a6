"""When a micro-batch closes: the one policy of the load test (`stepbatch.tools.loadtest`) and the
service (`stepbatch.service.batcher`).

A batch closes when it holds `batch_size` proofs, or when its oldest proof has waited `max_wait_s`,
whichever comes first. Times are seconds on a monotonic clock.
"""

from __future__ import annotations

import dataclasses

SIZE, WAIT = "size", "wait"


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
    batch_size: int
    max_wait_s: float

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_s * 1000:g}")

    @classmethod
    def of(cls, batch_size: int, max_wait_ms: float) -> "BatchPolicy":
        return cls(int(batch_size), max_wait_ms / 1000.0)

    def closes(self, waiting: int, oldest_arrival_s: float, now_s: float) -> str | None:
        """Why a batch of the `waiting` proofs closes now (SIZE or WAIT), or None if it stays open."""
        if waiting >= self.batch_size:
            return SIZE
        if waiting and now_s >= oldest_arrival_s + self.max_wait_s:
            return WAIT
        return None

    def deadline_s(self, oldest_arrival_s: float) -> float:
        """When a batch whose oldest proof arrived at `oldest_arrival_s` closes if it does not fill."""
        return oldest_arrival_s + self.max_wait_s
