"""Load over HTTP: pre-signed proofs sent to a running `stepbatch serve` on many connections.

Open loop: each proof is sent at its arrival time (the `received_at` its traffic was generated with,
shifted to the run's start), whatever the service does, so a slow service shows as latency, never as
a lower offered rate. Closed loop: every connection sends its next proof the moment its previous one
is answered. A proof's latency is request → response, and the service answers only once its batch is
committed, so it is the arrival → committed latency of the in-process runs (`LoadRun.committed_s`).

The service's `/metrics` counter of accepted proofs is read before and after a run: every accepted
answer must be a committed proof, which is what `LoadRun.lost` checks.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.schema import API_KEYS, SIGNED_FIELDS
from stepbatch.tools.loadtest import BatchRecord, LoadRun

_ACCEPTED = re.compile(r'^stepbatch_proofs_total\{code="ACCEPTED"\} ([0-9.e+]+)$', re.M)


def request_bodies(proofs: pa.Table) -> list[bytes]:
    """The API-shape JSON body of every proof row (what a phone sends)."""
    columns = {field: proofs.column(field).to_pylist() for field in (*SIGNED_FIELDS, "signature")}
    return [orjson.dumps({"payload": {API_KEYS[f]: columns[f][i] for f in SIGNED_FIELDS},
                          "signature": columns["signature"][i]}) for i in range(proofs.num_rows)]


class HttpLoad:
    def __init__(self, url: str, connections: int = 256, timeout_s: float = 120.0):
        self.url = url.rstrip("/")
        self.connections = connections
        self.timeout_s = timeout_s

    def run_open(self, bodies: list[bytes], offsets_s: np.ndarray, offered_per_s: float | None = None) -> LoadRun:
        return asyncio.run(self._run(bodies, np.asarray(offsets_s, np.float64), "open", offered_per_s))

    def run_closed(self, bodies: list[bytes]) -> LoadRun:
        return asyncio.run(self._run(bodies, None, "closed", None))

    async def _run(self, bodies, offsets_s, mode, offered_per_s) -> LoadRun:
        n = len(bodies)
        arrival, answered = np.full(n, np.nan), np.full(n, np.nan)
        codes: list[str | None] = [None] * n
        connector = aiohttp.TCPConnector(limit=self.connections)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            accepted_before = await self._accepted(session)
            start = time.monotonic()

            async def send(i: int) -> None:
                arrival[i] = time.monotonic() - start
                try:
                    async with session.post(f"{self.url}/proof/submit", data=bodies[i],
                                            headers={"content-type": "application/json"}) as response:
                        answer = orjson.loads(await response.read())
                        codes[i] = "ACCEPTED" if answer.get("ok") else answer.get("code", f"HTTP_{response.status}")
                except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as err:
                    codes[i] = f"ERROR {type(err).__name__}"
                    return
                answered[i] = time.monotonic() - start

            await drive(send, n, start, offsets_s if mode == "open" else None, self.connections)
            elapsed = float(np.nanmax(answered)) if np.isfinite(answered).any() else time.monotonic() - start
            accepted_after = await self._accepted(session)

        counts: dict[str, int] = {}
        for code in codes:
            counts[code] = counts.get(code, 0) + 1
        answered_rows = int(np.isfinite(answered).sum())
        accepted = counts.get("ACCEPTED", 0)
        committed = None if accepted_before is None or accepted_after is None else int(accepted_after - accepted_before)
        return LoadRun(
            mode=mode, offered_per_s=offered_per_s, batch_size=0, max_wait_ms=float("nan"),
            arrival_s=arrival, verdict_s=answered, committed_s=answered, verdict_rows=answered_rows,
            accepted=accepted, counts=counts, batches=[BatchRecord(0, n, mode, accepted)],
            stage_s={}, elapsed_s=elapsed, committed_clicks=committed)

    async def _accepted(self, session: aiohttp.ClientSession) -> float | None:
        """The service's count of accepted proofs, from /metrics (None if it does not answer)."""
        try:
            async with session.get(f"{self.url}/metrics") as response:
                text = await response.text()
        except aiohttp.ClientError:
            return None
        match = _ACCEPTED.search(text)
        return float(match[1]) if match else 0.0


async def drive(send, n: int, start: float, offsets_s: np.ndarray | None, connections: int) -> None:
    """`await send(i)` for every row: open loop (`offsets_s`), each at `start + offsets_s[i]` on the
    monotonic clock whether or not earlier ones are answered; closed loop, back to back on
    `connections` concurrent senders."""
    if offsets_s is not None:
        tasks = []
        for i in range(n):
            delay = start + offsets_s[i] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i)))
        await asyncio.gather(*tasks)
        return
    rows = iter(range(n))

    async def sender() -> None:
        for i in rows:
            await send(i)
    await asyncio.gather(*(sender() for _ in range(min(connections, n))))


def arrival_offsets(proofs: pa.Table) -> np.ndarray:
    """Seconds after the first arrival at which each proof of generated traffic arrives."""
    received = pc.cast(proofs.column("received_at"), pa.int64()).to_numpy(zero_copy_only=False)
    return (received - received[0]) / 1000.0
