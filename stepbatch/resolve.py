"""Stage 3: factorize the rows that passed the stateless checks, fetch their state, run the resolver.

Accounts, (account, nonce) pairs and triangles become dense integer codes with Arrow's dictionary
encoding (first-occurrence order, so the keys a store sees are deterministic); the kernel in
`kernels.resolve` then needs no hashing at all.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kernels.resolve import resolve_rows
from stepbatch import mesh
from stepbatch.codes import REWARD_MICRO
from stepbatch.config import Config
from stepbatch.store.base import PriorState, StateKeys, Store

_REWARDS = np.asarray(REWARD_MICRO, np.int64)
_ACCOUNT_CHARS = 42  # "0x" + 40 hex digits, guaranteed for every row that passed the field rules


@dataclasses.dataclass
class Resolution:
    keys: StateKeys
    prior: PriorState
    final: PriorState
    row_account: np.ndarray  # int64, -1 for rows that never reached the stateful checks
    row_pair: np.ndarray
    row_triangle: np.ndarray
    code: np.ndarray  # uint8
    detail: np.ndarray  # int64, see kernels.resolve.resolve_rows
    reward_micro: np.ndarray  # int64
    click_number: np.ndarray  # int64, 0 when rejected
    speed_mps: np.ndarray  # float64, NaN when not measured
    subdivided: np.ndarray  # bool


@dataclasses.dataclass
class BatchIndex:
    """The dense codes of one batch: unique keys and, per row, the index of its key (-1 if none)."""

    keys: StateKeys
    triangle_keys: np.ndarray  # int64 packed keys aligned with keys.triangles
    row_account: np.ndarray
    row_pair: np.ndarray
    row_triangle: np.ndarray


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

    keys = StateKeys(
        accounts=account_codes.dictionary,
        triangles=mesh.encode_keys(triangle_keys),
        nonce_accounts=pc.utf8_slice_codeunits(pairs, 0, _ACCOUNT_CHARS),
        nonces=pc.utf8_slice_codeunits(pairs, _ACCOUNT_CHARS),
    )
    return BatchIndex(
        keys=keys,
        triangle_keys=triangle_keys,
        row_account=_scatter(n, reach, account_codes.indices),
        row_pair=_scatter(n, reach, pair_codes.indices),
        row_triangle=_scatter(n, reach, triangle_codes),
    )


def resolve(proofs: pa.Table, pre_code: np.ndarray, out_of_bounds: np.ndarray, store: Store,
            config: Config) -> Resolution:
    index = index_batch(proofs, pre_code == 0)
    prior = store.load_state(index.keys)
    final = prior.copy()

    # Children of a batch triangle that the batch itself names: those a mid-batch subdivision makes
    # claimable from that row on.
    children = mesh.child_keys(index.triangle_keys)
    position = np.searchsorted(index.triangle_keys, children)
    position = np.minimum(position, max(len(index.triangle_keys) - 1, 0))
    named = (len(index.triangle_keys) > 0) & (index.triangle_keys[position] == children)
    triangle_children = np.where(named, position, -1).astype(np.int64)

    n = proofs.num_rows
    out = dict(code=np.zeros(n, np.uint8), reward_micro=np.zeros(n, np.int64),
               click_number=np.zeros(n, np.int64), speed_mps=np.zeros(n, np.float64),
               detail=np.zeros(n, np.int64), subdivided=np.zeros(n, np.bool_))
    resolve_rows(
        pre_code.astype(np.uint8), out_of_bounds.astype(np.bool_),
        index.row_account, index.row_pair, index.row_triangle,
        np.asarray(pc.fill_null(proofs.column("lat"), 0.0), np.float64),
        np.asarray(pc.fill_null(proofs.column("lon"), 0.0), np.float64),
        np.asarray(pc.fill_null(proofs.column("ts_ms"), 0), np.int64),
        mesh.key_levels(index.triangle_keys), triangle_children, _REWARDS,
        final.account_balance_micro, final.account_proof_count, final.account_has_last,
        final.account_last_lat, final.account_last_lon, final.account_last_ts_ms,
        final.triangle_state, final.triangle_clicks, final.nonce_used,
        float(config.speed_limit_mps), int(config.moratorium_ms), int(config.subdivide_at_clicks),
        out["code"], out["reward_micro"], out["click_number"], out["speed_mps"], out["detail"],
        out["subdivided"],
    )
    return Resolution(keys=index.keys, prior=prior, final=final, row_account=index.row_account,
                      row_pair=index.row_pair, row_triangle=index.row_triangle, **out)


def _dictionary(values) -> pa.DictionaryArray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return pc.dictionary_encode(values)


def _scatter(n: int, reach: np.ndarray, codes) -> np.ndarray:
    full = np.full(n, -1, np.int64)
    full[reach] = np.asarray(codes, np.int64)
    return full
