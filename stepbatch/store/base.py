"""The narrow interface between the engine and a state store.

The engine never talks to a database. For a batch it names the keys it touches (`StateKeys`), the
store answers with arrays aligned to those keys (`PriorState`), and after validation the store is
handed a `BatchOutcome` to commit. A store that finds its state moved since `load_state` raises
`StaleStateError`; the validator then re-validates against fresh state and retries.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import pyarrow as pa

from stepbatch.protocol import TriangleState


class StoreError(RuntimeError):
    """The store cannot do what was asked (unreachable, no transactions, a conflicting batch id)."""


def brief(err: Exception, limit: int = 300) -> str:
    """An error's first line, cut to `limit` characters: a driver error can quote a whole document."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


class StaleStateError(StoreError):
    """State changed between `load_state` and `commit`: re-validate and retry."""


@dataclasses.dataclass(frozen=True)
class StateKeys:
    """Unique keys one batch touches; every array is a `pa.string()` array without nulls."""

    accounts: pa.Array  # lower-case 0x addresses
    triangles: pa.Array  # canonical STEP-TRI-v1 ids
    nonce_accounts: pa.Array  # (nonce_accounts[i], nonces[i]) is one unique pair
    nonces: pa.Array


@dataclasses.dataclass
class PriorState:
    """State aligned with `StateKeys`; the same shape describes the state after a batch."""

    account_balance_micro: np.ndarray  # int64
    account_proof_count: np.ndarray  # int64; 0 for an account the store does not hold
    account_has_last: np.ndarray  # bool: a last accepted proof exists
    account_last_lat: np.ndarray  # float64 degrees
    account_last_lon: np.ndarray  # float64 degrees
    account_last_ts_ms: np.ndarray  # int64 epoch ms
    triangle_state: np.ndarray  # int8 TriangleState, MISSING (-1) when the store has no such triangle
    triangle_clicks: np.ndarray  # int64
    nonce_used: np.ndarray  # bool: an accepted proof already used this (account, nonce)
    seq: int | None = None  # the store's commit sequence number this state was read at, if it has one
    # bool per triangle: it has a document of its own (a store of documents says; None elsewhere).
    triangle_stored: np.ndarray | None = None

    @classmethod
    def empty(cls, keys: StateKeys) -> "PriorState":
        """State in which nothing exists yet."""
        n_acc, n_tri, n_pair = len(keys.accounts), len(keys.triangles), len(keys.nonces)
        return cls(
            account_balance_micro=np.zeros(n_acc, np.int64),
            account_proof_count=np.zeros(n_acc, np.int64),
            account_has_last=np.zeros(n_acc, np.bool_),
            account_last_lat=np.zeros(n_acc, np.float64),
            account_last_lon=np.zeros(n_acc, np.float64),
            account_last_ts_ms=np.zeros(n_acc, np.int64),
            triangle_state=np.full(n_tri, TriangleState.MISSING, np.int8),
            triangle_clicks=np.zeros(n_tri, np.int64),
            nonce_used=np.zeros(n_pair, np.bool_),
        )

    def copy(self) -> "PriorState":
        """The same state, to be changed into the state after a batch: without `triangle_stored`,
        which describes the store as it was read."""
        return PriorState(**{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)
                             if f.name not in ("seq", "triangle_stored")}, seq=self.seq)


@dataclasses.dataclass(frozen=True)
class CommittedBatch:
    """What a store keeps of a committed batch: enough to answer a repeated `finalize`."""

    batch_id: str
    digest: str
    input_digest: str  # fingerprint of the proofs as submitted, see `stepbatch.verdicts.input_digest`
    counts: dict[str, int]
    verdicts: pa.Table | None  # VERDICT_SCHEMA, rebuilt from what the store holds; None if not kept


@dataclasses.dataclass
class BatchOutcome:
    """Everything validation decided about one batch, in the form a store commits it.

    `final` is the state after applying the batch to `prior`. `row_account`, `row_triangle` and
    `row_pair` map each row to its key index (-1 where the row's field is invalid).
    `subdivided_rows` are the rows whose click subdivided (or exhausted) their triangle, in order.
    """

    batch_id: str
    batch_time_ms: int | None
    digest: str
    input_digest: str
    counts: dict[str, int]
    proofs: pa.Table
    verdicts: pa.Table
    keys: StateKeys
    prior: PriorState
    final: PriorState
    row_account: np.ndarray
    row_triangle: np.ndarray
    row_pair: np.ndarray
    subdivided_rows: np.ndarray


class Store(Protocol):
    def load_state(self, keys: StateKeys) -> PriorState:
        """Prior state for `keys`, in a few round trips, never one per row."""

    def committed(self, batch_id: str) -> CommittedBatch | None:
        """The committed batch of that id, or None."""

    def batch_ids(self, prefix: str) -> list[str]:
        """Ids of the committed batches that start with `prefix` (a replay run finds its batches)."""

    def commit(self, outcome: BatchOutcome) -> None:
        """Apply the outcome atomically, guarded on `outcome.prior`; raise StaleStateError if it moved."""

    def accepted_count(self) -> int:
        """Accepted proofs the store holds."""
