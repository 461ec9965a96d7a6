"""Stage 3: factorize the rows that passed the stateless checks, fetch their state, run the resolver.

Accounts, (account, nonce) pairs and triangles become dense integer codes with Arrow's dictionary
encoding (first-occurrence order, so the keys a store sees are deterministic); the kernel in
`stepbatch_kernels.resolve` then needs no hashing at all. `index_batch` names the keys, the store
loads their state, and `run_resolver` applies SPEC §4 checks 6–11 and the state rules in batch order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.checks import StatelessResult
from stepbatch.config import Config
from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys
from stepbatch.protocol import REWARD_MICRO
from stepbatch.store.base import PriorState, StateKeys
from stepbatch_kernels.resolve import resolve_rows

_REWARDS = np.asarray(REWARD_MICRO, np.int64)
_ACCOUNT_CHARS = 42  # "0x" + 40 hex digits, guaranteed for every row that passed the field rules


@dataclasses.dataclass(frozen=True)
class BatchIndex:
    """The dense codes of one batch: unique keys and, per row, the index of its key (-1 if none)."""

    keys: StateKeys
    triangle_keys: np.ndarray  # int64 packed keys aligned with keys.triangles, ascending
    triangle_level: np.ndarray  # int64 level of each of those triangles
    triangle_children: np.ndarray  # (n_triangles, 4) index of each child among them, -1 if absent
    row_account: np.ndarray  # int64 per row
    row_pair: np.ndarray
    row_triangle: np.ndarray


@dataclasses.dataclass(frozen=True)
class Resolution:
    """Per row, what the resolver decided; `final` is the state after the batch."""

    final: PriorState
    code: np.ndarray  # uint8 verdict code (the stateless code where one failed)
    reward_micro: np.ndarray  # int64, 0 when rejected
    click_number: np.ndarray  # int64, 0 when rejected
    speed_mps: np.ndarray  # float64, NaN where no speed was measured
    dt_ms: np.ndarray  # int64 time since the account's last accepted proof, 0 where none
    triangle_state: np.ndarray  # int8 state the row found its triangle in (TRIANGLE_NOT_ACTIVE)
    level: np.ndarray  # int64 level of the row's triangle, 0 where the row has none
    subdivided: np.ndarray  # bool: this row's click subdivided (or exhausted) its triangle


def index_batch(proofs: pa.Table, reach: np.ndarray) -> BatchIndex:
    """Factorize the accounts, (account, nonce) pairs and triangles of the rows in `reach`."""
    n = proofs.num_rows
    rows = pa.array(np.flatnonzero(reach))
    accounts = pc.utf8_lower(pc.take(proofs.column("account"), rows))
    nonces = pc.take(proofs.column("nonce"), rows)

    account_codes = _dictionary(accounts)
    # A valid account has exactly 42 characters, so account + nonce is an unambiguous pair key.
    pair_codes = _dictionary(pc.binary_join_element_wise(accounts, nonces, ""))
    pairs = pair_codes.dictionary
    triangle_keys, triangle_codes = np.unique(
        np.asarray(pc.take(proofs.column("triangle_key"), rows), np.int64), return_inverse=True)

    # Children of a batch triangle that the batch itself names: those a mid-batch subdivision makes
    # claimable from that row on.
    children = mesh_keys.child_keys(triangle_keys)
    position = np.minimum(np.searchsorted(triangle_keys, children), max(len(triangle_keys) - 1, 0))
    named = (len(triangle_keys) > 0) & (triangle_keys[position] == children)

    keys = StateKeys(
        accounts=account_codes.dictionary,
        triangles=mesh_ids.encode_keys(triangle_keys),
        nonce_accounts=pc.utf8_slice_codeunits(pairs, 0, _ACCOUNT_CHARS),
        nonces=pc.utf8_slice_codeunits(pairs, _ACCOUNT_CHARS),
    )
    return BatchIndex(
        keys=keys,
        triangle_keys=triangle_keys,
        triangle_level=mesh_keys.key_levels(triangle_keys),
        triangle_children=np.where(named, position, -1).astype(np.int64),
        row_account=_scatter(n, reach, account_codes.indices),
        row_pair=_scatter(n, reach, pair_codes.indices),
        row_triangle=_scatter(n, reach, triangle_codes),
    )


def run_resolver(proofs: pa.Table, stateless: StatelessResult, index: BatchIndex, prior: PriorState,
                 config: Config) -> Resolution:
    """Apply checks 6–11 and the state rules to every row in batch order, starting from `prior`."""
    n = proofs.num_rows
    final = prior.copy()
    out = dict(code=np.zeros(n, np.uint8), reward_micro=np.zeros(n, np.int64),
               click_number=np.zeros(n, np.int64), speed_mps=np.zeros(n, np.float64),
               dt_ms=np.zeros(n, np.int64), triangle_state=np.zeros(n, np.int8),
               subdivided=np.zeros(n, np.bool_))
    resolve_rows(
        stateless.code.astype(np.uint8), stateless.out_of_bounds.astype(np.bool_),
        index.row_account, index.row_pair, index.row_triangle,
        np.asarray(pc.fill_null(proofs.column("lat"), 0.0), np.float64),
        np.asarray(pc.fill_null(proofs.column("lon"), 0.0), np.float64),
        np.asarray(pc.fill_null(proofs.column("ts_ms"), 0), np.int64),
        index.triangle_level, index.triangle_children, _REWARDS,
        final.account_balance_micro, final.account_proof_count, final.account_has_last,
        final.account_last_lat, final.account_last_lon, final.account_last_ts_ms,
        final.triangle_state, final.triangle_clicks, final.nonce_used,
        float(config.speed_limit_mps), int(config.moratorium_ms), int(config.subdivide_at_clicks),
        out["code"], out["reward_micro"], out["click_number"], out["speed_mps"], out["dt_ms"],
        out["triangle_state"], out["subdivided"],
    )
    level = np.where(index.row_triangle >= 0,
                     index.triangle_level[np.maximum(index.row_triangle, 0)] if len(index.triangle_level)
                     else 0, 0)
    return Resolution(final=final, level=level, **out)


def _dictionary(values) -> pa.DictionaryArray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return pc.dictionary_encode(values)


def _scatter(n: int, reach: np.ndarray, codes) -> np.ndarray:
    full = np.full(n, -1, np.int64)
    full[reach] = np.asarray(codes, np.int64)
    return full
