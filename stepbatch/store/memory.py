"""An in-memory store: replays without a database, consensus simulations, and the tests' baseline.

It holds exactly what the MongoDB store holds, in dicts keyed like its collections, and follows the
same commit rules (guarded on the prior state, children of a subdivided triangle created unless they
already exist), so a batch gives the same verdicts against either.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Iterable

import numpy as np

from stepbatch import mesh
from stepbatch.mesh.regions import Region, Regions
from stepbatch.protocol import TriangleState
from stepbatch.store.base import (
    BatchOutcome,
    CommittedBatch,
    PriorState,
    StaleStateError,
    StateKeys,
    Store,
)


@dataclasses.dataclass
class _Account:
    balance_micro: int = 0
    proof_count: int = 0
    last: tuple[float, float, int] | None = None  # (lat_deg, lon_deg, ts_ms)


class MemoryStore:
    """State in process memory; `triangles` are ids that exist from the start, active with 0 clicks.

    With a `backing` store, state the memory does not hold yet is read from it and every change stays
    in memory: a dry run against a real database (`stepbatch replay --no-commit`). Without
    `keep_verdicts` a committed batch keeps only its digests and counts, which bounds the memory of
    a long replay; its verdicts then cannot be handed back for a repeated batch id.
    """

    def __init__(self, triangles: Iterable[str] = (), backing: Store | None = None,
                 keep_verdicts: bool = True, regions: Iterable[Region] = ()):
        self._lock = threading.Lock()
        self.backing = backing
        self.keep_verdicts = keep_verdicts
        self.triangles: dict[str, list[int]] = {}  # id → [state, clicks]
        self.accounts: dict[str, _Account] = {}
        # account → nonces its accepted proofs used; one key string per account keeps a long replay
        # from holding a copy of the address for every proof.
        self.nonces: dict[str, set[str]] = {}
        self.batches: dict[str, CommittedBatch] = {}
        self.regions = Regions.of(regions)
        self.add_triangles(triangles)

    def declare(self, region: Region) -> None:
        """Declare a region: its triangles exist (active, 0 clicks) until a batch changes them."""
        with self._lock:
            self.regions = self.regions.plus(region)

    def add_triangles(self, triangle_ids: Iterable[str]) -> None:
        """Make these triangles exist (active, 0 clicks); ones that already exist are left as they are."""
        with self._lock:
            for triangle_id in triangle_ids:
                mesh.decode_id(triangle_id)
                self.triangles.setdefault(triangle_id, [int(TriangleState.ACTIVE), 0])

    def load_state(self, keys: StateKeys) -> PriorState:
        state = self.backing.load_state(keys) if self.backing is not None else PriorState.empty(keys)
        with self._lock:
            for i, address in enumerate(keys.accounts.to_pylist()):
                account = self.accounts.get(address)
                if account is None:
                    continue
                state.account_balance_micro[i] = account.balance_micro
                state.account_proof_count[i] = account.proof_count
                if account.last is not None:
                    state.account_has_last[i] = True
                    (state.account_last_lat[i], state.account_last_lon[i],
                     state.account_last_ts_ms[i]) = account.last
            triangle_ids = keys.triangles.to_pylist()
            for i, triangle_id in enumerate(triangle_ids):
                triangle = self.triangles.get(triangle_id)
                if triangle is not None:
                    state.triangle_state[i], state.triangle_clicks[i] = triangle
            self._overlay_regions(triangle_ids, state.triangle_state)
            pairs = zip(keys.nonce_accounts.to_pylist(), keys.nonces.to_pylist())
            state.nonce_used |= np.fromiter((nonce in self.nonces.get(account, ()) for account, nonce
                                             in pairs), np.bool_, len(keys.nonces))
        return state

    def _overlay_regions(self, triangle_ids: list[str], states: np.ndarray) -> None:
        """Triangles nobody holds that a declared region covers exist, active with no clicks."""
        if not self.regions:
            return
        unknown = np.flatnonzero(states == TriangleState.MISSING)
        covered = unknown[self.regions.covers_ids([triangle_ids[i] for i in unknown])]
        states[covered] = TriangleState.ACTIVE

    def accepted_count(self) -> int:
        """Accepted proofs the store holds: the sum of its accounts' proof counts."""
        with self._lock:
            return sum(account.proof_count for account in self.accounts.values())

    def committed(self, batch_id: str) -> CommittedBatch | None:
        with self._lock:
            stored = self.batches.get(batch_id)
        if stored is None and self.backing is not None:
            return self.backing.committed(batch_id)
        return stored

    def batch_ids(self, prefix: str) -> list[str]:
        with self._lock:
            mine = [batch_id for batch_id in self.batches if batch_id.startswith(prefix)]
        return mine + (self.backing.batch_ids(prefix) if self.backing is not None else [])

    def commit(self, outcome: BatchOutcome) -> None:
        keys, prior, final = outcome.keys, outcome.prior, outcome.final
        with self._lock:
            if outcome.batch_id in self.batches:
                raise StaleStateError(f"batch {outcome.batch_id} was committed meanwhile")
            if not self._unchanged_since(keys, prior):
                raise StaleStateError("state changed since it was loaded for this batch")

            triangle_ids = keys.triangles.to_pylist()
            for i, triangle_id in enumerate(triangle_ids):
                if final.triangle_state[i] != TriangleState.MISSING:
                    self.triangles[triangle_id] = [int(final.triangle_state[i]),
                                                   int(final.triangle_clicks[i])]
            for row in outcome.subdivided_rows:
                if final.triangle_state[outcome.row_triangle[row]] == TriangleState.SUBDIVIDED:
                    for child in mesh.children(triangle_ids[outcome.row_triangle[row]]):
                        self.triangles.setdefault(child, [int(TriangleState.ACTIVE), 0])

            for i, address in enumerate(keys.accounts.to_pylist()):
                if final.account_proof_count[i] == prior.account_proof_count[i]:
                    continue
                self.accounts[address] = _Account(
                    balance_micro=int(final.account_balance_micro[i]),
                    proof_count=int(final.account_proof_count[i]),
                    last=(float(final.account_last_lat[i]), float(final.account_last_lon[i]),
                          int(final.account_last_ts_ms[i])),
                )
            used = np.flatnonzero(final.nonce_used & ~prior.nonce_used)
            nonce_accounts, nonces = keys.nonce_accounts.to_pylist(), keys.nonces.to_pylist()
            for i in used:
                self.nonces.setdefault(nonce_accounts[i], set()).add(nonces[i])
            self.batches[outcome.batch_id] = CommittedBatch(
                batch_id=outcome.batch_id, digest=outcome.digest, input_digest=outcome.input_digest,
                counts=dict(outcome.counts), verdicts=outcome.verdicts if self.keep_verdicts else None)

    def _unchanged_since(self, keys: StateKeys, prior: PriorState) -> bool:
        """Whether what this store holds for `keys` is still `prior` (a backing store's share of the
        state is read-only here and cannot have moved through this store)."""
        for i, address in enumerate(keys.accounts.to_pylist()):
            account = self.accounts.get(address)
            if account is None and self.backing is not None:
                continue
            if (account.proof_count if account else 0) != prior.account_proof_count[i]:
                return False
        triangle_ids = keys.triangles.to_pylist()
        held = [self.triangles.get(triangle_id, (TriangleState.MISSING, 0)) for triangle_id in triangle_ids]
        states = np.array([state for state, _ in held], np.int8)
        self._overlay_regions(triangle_ids, states)
        for i, triangle_id in enumerate(triangle_ids):
            if triangle_id not in self.triangles and self.backing is not None:
                continue
            if states[i] != prior.triangle_state[i] or held[i][1] != prior.triangle_clicks[i]:
                return False
        return True

    def close(self) -> None:
        """Nothing to release; present so every store can be used the same way."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
