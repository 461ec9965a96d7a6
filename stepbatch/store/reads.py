"""Reading a batch's prior state through the write-through cache (`stepbatch.store.cache`).

What the cache holds is used as it is; the rest is read with one `_id` query per IN_CHUNK keys and
then cached, accounts together with every nonce they used, so that a nonce the cache does not know
is certainly unused (a cache hit is confirmed against the database, see `fill_nonces`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys
from stepbatch.mesh.regions import Regions
from stepbatch.protocol import TriangleState
from stepbatch.store import documents, layout, servers
from stepbatch.store.base import PriorState, StateKeys, StoreError, brief
from stepbatch.store.cache import StateCache, nonce_hashes

# Keys per `{_id: {$in: [...]}}` query. SecantusDB's Python server re-applies `$in` linearly to every
# matched document, so a query costs ~ chunk² on top of its round trip (one query of 1,000 ids:
# 0.6 s; of 10,000: 59 s). Measured on 5,000 triangle-id lookups in an 82k-triangle collection (2
# shared cores, best of 3): chunks of 10 / 20 / 40 / 60 / 100 / 150 / 250 ids took
# 77 / 59 / 58 / 64 / 80 / 105 / 153 µs per id. The Rust server (like mongod) does not: 4,000 ids
# of 200,000 accounts in chunks of 40 / 200 / 1,000 / 4,000 took 66 / 45 / 42 / 98 µs per id (the
# Python server: 314 / 832 / 4,270 / 12,587).
IN_CHUNK = 40
IN_CHUNK_INDEXED = 1_000
_IN_CHUNKS: dict = {}


def in_chunk(db) -> int:
    """IN_CHUNK on SecantusDB's Python server, IN_CHUNK_INDEXED on any other; asked once per server."""
    key = frozenset(db.client.nodes)
    if key not in _IN_CHUNKS:
        _IN_CHUNKS[key] = IN_CHUNK if servers.is_python_server(db.client) else IN_CHUNK_INDEXED
    return _IN_CHUNKS[key]


def _from_cache(lookup, keys: list[str], fill) -> list[int]:
    """`fill(i, entry)` for every key the cache holds; the positions of those it does not."""
    missing = []
    for i, key in enumerate(keys):
        entry = lookup(key)
        if entry is None:
            missing.append(i)
        else:
            fill(i, entry)
    return missing


def _set_triangle(state: PriorState, i: int, entry: tuple) -> None:
    state.triangle_state[i], state.triangle_clicks[i], state.triangle_stored[i] = entry


def fill_accounts(db, cache: StateCache, addresses: list[str], state: PriorState) -> None:
    """Account state from the cache, the rest (with all their used nonces) from the database."""
    missing = _from_cache(cache.account, addresses, lambda i, entry: set_account(state, i, entry))
    if not missing:
        return
    found = {doc["_id"]: doc for doc in find_in(
        db, "accounts", [addresses[i] for i in missing], {"balanceMicro": 1, "proofCount": 1, "lastProof": 1})}
    for i in missing:
        doc = found.get(addresses[i])
        entry = account_entry(doc)
        used = used_nonces(db, addresses[i]) if entry[1] > 0 else np.zeros(0, np.uint64)
        cache.put_account(addresses[i], entry, used)
        set_account(state, i, entry)


def used_nonces(db, address: str) -> np.ndarray:
    """Hashes of every nonce the account's accepted proofs used: one `_id` range scan."""
    prefix = layout.nonce_id(address, "")
    ids = [doc["_id"] for doc in db.nonces.find(
        {"_id": {"$gte": prefix, "$lt": prefix[:-1] + ";"}}, {"_id": 1})]
    return nonce_hashes(address, [value[len(prefix):] for value in ids])


def fill_triangles(db, cache: StateCache, triangle_ids: list[str], state: PriorState,
                   regions: Regions) -> None:
    """Triangle state from the cache, the rest from the database: a triangle without a document is
    active with no clicks where a declared region covers it or its parent is subdivided, and missing
    otherwise."""
    state.triangle_stored = np.zeros(len(triangle_ids), bool)
    missing = _from_cache(cache.triangle, triangle_ids, lambda i, entry: _set_triangle(state, i, entry))
    if not missing:
        return
    found = {doc["_id"]: doc for doc in find_in(
        db, "triangles", [triangle_ids[i] for i in missing], {"state": 1, "clicks": 1})}
    absent = [i for i in missing if triangle_ids[i] not in found]
    exists = dict(zip(absent, exist_without_document(db, [triangle_ids[i] for i in absent], regions,
                                                     cache).tolist()))
    for i in missing:
        doc = found.get(triangle_ids[i])
        entry = (_stored_entry(triangle_ids[i], doc) if doc
                 else (int(TriangleState.ACTIVE if exists[i] else TriangleState.MISSING), 0, False))
        cache.put_triangle(triangle_ids[i], entry)
        _set_triangle(state, i, entry)


def exist_without_document(db, triangle_ids: list[str], regions: Regions,
                           cache: StateCache | None = None) -> np.ndarray:
    """bool per triangle that has no document: it exists all the same (active, unclicked), because a
    declared region covers it or its parent is subdivided."""
    exists = regions.covers_ids(triangle_ids)
    undeclared = np.flatnonzero(~exists)
    exists[undeclared] = _subdivided_parent(db, [triangle_ids[i] for i in undeclared], cache)
    return exists


def _subdivided_parent(db, triangle_ids: list[str], cache: StateCache | None) -> np.ndarray:
    """bool per triangle: its parent is subdivided. A subdivided parent has its document; it is read
    from `cache` where that holds it."""
    out = np.zeros(len(triangle_ids), bool)
    if not triangle_ids:
        return out
    decoded = mesh_ids.decode_ids(pa.array(triangle_ids, pa.string()))
    parents = np.where(decoded.valid, mesh_keys.parent_keys(np.where(decoded.valid, decoded.keys, 0)), -1)
    has_parent = np.flatnonzero(parents >= 0)
    parent_ids = mesh_ids.encode_keys(parents[has_parent]).to_pylist()
    states: dict[str, int] = {}
    unknown = []
    for parent_id in dict.fromkeys(parent_ids):
        entry = cache.triangle(parent_id) if cache is not None else None
        if entry is None:
            unknown.append(parent_id)
        else:
            states[parent_id] = entry[0]
    for doc in find_in(db, "triangles", unknown, {"state": 1, "clicks": 1}):
        entry = _stored_entry(doc["_id"], doc)
        if cache is not None:
            cache.put_triangle(doc["_id"], entry)
        states[doc["_id"]] = entry[0]
    out[has_parent] = [states.get(parent_id) == TriangleState.SUBDIVIDED for parent_id in parent_ids]
    return out


def _stored_entry(triangle_id: str, doc: dict) -> tuple[int, int, bool]:
    try:
        return documents.STATE_BY_NAME[doc["state"]], int(doc.get("clicks", 0)), True
    except KeyError as err:
        raise StoreError(f"triangle {triangle_id} has an unknown state: {brief(err)}") from err


def fill_nonces(db, cache: StateCache, keys: StateKeys, state: PriorState, pending: set[str]) -> None:
    """Every batch account is cached with all its used nonces by now, so a nonce missing from its
    hashes is unused; a hit is confirmed by `_id` (it is a replay, or rarely a hash collision)."""
    if len(keys.nonces) == 0:
        return
    encoded = pc.dictionary_encode(keys.nonce_accounts)
    owners, owner_of = encoded.dictionary.to_pylist(), encoded.indices.to_numpy()
    nonces = keys.nonces.to_pylist()
    order = np.argsort(owner_of, kind="stable")
    bounds = np.searchsorted(owner_of[order], np.arange(len(owners) + 1))
    candidates = []
    for k, owner in enumerate(owners):
        rows = order[bounds[k]:bounds[k + 1]]
        hits = cache.maybe_used(owner, nonce_hashes(owner, [nonces[r] for r in rows]))
        candidates.extend(rows[hits].tolist())
    if candidates:
        ids = [layout.nonce_id(keys.nonce_accounts[r].as_py(), nonces[r]) for r in candidates]
        used = {doc["_id"] for doc in find_in(db, "nonces", ids, {"_id": 1})}
        used.update(pending)  # used by batches not committed yet
        state.nonce_used[[r for r, value in zip(candidates, ids) if value in used]] = True


def find_in(db, collection: str, ids: list, projection: dict) -> list[dict]:
    """Documents whose _id is in `ids`, chunked (see IN_CHUNK)."""
    found: list[dict] = []
    coll = db[collection]
    chunk = in_chunk(db)
    for start in range(0, len(ids), chunk):
        found.extend(coll.find({"_id": {"$in": ids[start:start + chunk]}}, projection))
    return found


def account_entry(doc: dict | None) -> tuple:
    if doc is None:
        return (0, 0, False, 0.0, 0.0, 0)
    last = doc.get("lastProof") or {}
    return (int(doc.get("balanceMicro", 0)), int(doc.get("proofCount", 0)), "ts" in last,
            float(last.get("lat", 0.0)), float(last.get("lon", 0.0)), int(last["ts"]) if "ts" in last else 0)


def set_account(state: PriorState, i: int, entry: tuple) -> None:
    (state.account_balance_micro[i], state.account_proof_count[i], state.account_has_last[i],
     state.account_last_lat[i], state.account_last_lon[i], state.account_last_ts_ms[i]) = entry
