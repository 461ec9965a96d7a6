"""How one batch is laid out in MongoDB: the fewest documents and index entries that keep SPEC §5.

Measured on the embedded server, a document costs about as much as an index entry, an insert ~55 µs
and an update ~250-400 µs, while one document holding thousands of rows as columns costs ~10 ms. So:

- `nonces`: one document per accepted proof, `{_id: "{account}:{nonce}"}` and nothing else; the unique
  `_id` is (account, nonce) uniqueness, enforced by the database itself.
- `verdicts`: the batch's whole verdict table with the proof fields behind it (timestamp, position,
  accuracy, signature, whether the click subdivided), as Arrow IPC column chunks of CHUNK_ROWS rows:
  `{_id: "{batch}#{k}", batchId, seq, first, rows, accounts: [lower-case accounts], ipc}`. A batch's
  verdicts are an `_id` range; an account's history (accepted and rejected, with codes and messages)
  is one query on the multikey `accounts` index, newest first by `seq`.
- `accounts` and `triangles` as SPEC §5 names them, written only where the batch changed them, each
  update addressed by `_id` alone. What guards them is the commit sequence number (`meta`): every
  commit advances it, guarded on the number its batch was validated at, so a batch whose state moved
  is refused before anything is written (see `stepbatch.store.cache`). A guard per document would
  say nothing more and cost twice as much: SecantusDB serves a filter on `_id` alone from the
  primary key (~260 µs per update) but plans one with more fields through every index picker first
  (~550 µs).
- A triangle gets its document when it is first changed, and that write is an insert: a declared
  triangle (SPEC §5) and the child of a subdivided triangle exist without one, active and unclicked,
  the child by its parent's `subdivided` state and `childrenIds` (a subdivision declares its four
  children). Four inserts at each subdivision and an update at each child's first click become one
  insert at the first click of each child that is clicked. The store knows, per triangle, whether
  it has a document (`PriorState.triangle_stored`). `benchmarks/bench_updates.py` measures the forms.
- `batches`: one document per batch; `meta`: the layout version and the commit sequence number.

Everything is built here, outside the transaction, so the transaction itself is only round trips.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.int64 import Int64

from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys
from stepbatch.protocol import TRIANGLE_STATE_NAMES, Code, TriangleState
from stepbatch.schema import VERDICT_SCHEMA
from stepbatch.store.base import BatchOutcome
from stepbatch.store.documents import triangle_documents

# 3: a subdivision writes no child documents (its children exist by their parent's state). A layout-2
# database reads the same; `stepbatch db migrate` moves it to 3.
LAYOUT_VERSION = 3
CHUNK_ROWS = 4096
# A rejected row's text is whatever arrived (a 17 MB nonce is a rejection like any other); stored,
# each text field is cut to this many characters and marked, so that every batch fits in BSON.
STORED_TEXT_CHARS = 256

# The verdict table of SPEC §4 followed by the proof fields an auditor needs, as stored per chunk.
STORED_SCHEMA = VERDICT_SCHEMA.append(pa.field("account_key", pa.string())).append(
    pa.field("subdivided", pa.bool_())).append(pa.field("ts_ms", pa.int64())).append(
    pa.field("timestamp", pa.string())).append(pa.field("lat", pa.float64())).append(
    pa.field("lon", pa.float64())).append(pa.field("accuracy", pa.float64())).append(
    pa.field("signature", pa.string()))
_TEXT = ("account", "nonce", "triangle_id", "message", "account_key", "timestamp", "signature")
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")
_STATE_NAMES = np.array([TRIANGLE_STATE_NAMES.get(TriangleState(s), "missing") for s in (0, 1, 2, -1)],
                        dtype=object)  # index -1 (MISSING) reads the last entry


@dataclasses.dataclass
class CommitPlan:
    """The writes of one batch, per collection, in the order the transaction sends them."""

    batch: dict
    nonces: list[dict]
    chunks: list[dict]
    account_inserts: list[dict]  # accounts without an accepted proof before this batch
    account_updates: list[tuple[dict, dict]]  # ({_id}, $set)
    triangle_inserts: list[dict]  # triangles first changed by this batch, which had no document
    triangle_updates: list[tuple[dict, dict]]  # ({_id}, $set)
    # For the cache: per triangle of the batch, whether it has a document after the batch; and the
    # children of the triangles the batch subdivided.
    triangle_stored: np.ndarray
    children: list[str]


def plan_commit(outcome: BatchOutcome, seq: int, now: dt.datetime) -> CommitPlan:
    """The batch's writes."""
    keys, prior, final = outcome.keys, outcome.prior, outcome.final
    accepted = np.flatnonzero(pc.equal(outcome.verdicts.column("code"), Code.ACCEPTED.name)
                              .to_numpy(zero_copy_only=False))
    ts_ms = np.asarray(pc.fill_null(outcome.proofs.column("ts_ms"), 0), np.int64)
    triangle_ids = keys.triangles.to_pylist()
    triangle_keys = mesh_ids.decode_ids(keys.triangles).keys

    # Per triangle, the proof time of its last accepted click in this batch.
    last_click_ms = np.full(len(triangle_ids), -1, np.int64)
    np.maximum.at(last_click_ms, outcome.row_triangle[accepted], ts_ms[accepted])
    children_of = subdivisions(outcome, triangle_keys)

    def fields(i: int) -> dict:
        values = {"clicks": int(final.triangle_clicks[i]), "updatedAt": now}
        if final.triangle_state[i] != prior.triangle_state[i]:
            values["state"] = _STATE_NAMES[final.triangle_state[i]]
        if last_click_ms[i] >= 0:
            values["lastClickAt"] = DatetimeMS(int(last_click_ms[i]))
        if i in children_of:
            values["childrenIds"] = children_of[i]
        return values

    written = triangles_written(outcome)
    stored = _stored(prior)
    created = np.flatnonzero(written & ~stored)
    account_inserts, account_updates = _account_writes(outcome, now)
    return CommitPlan(
        batch=_batch_document(outcome, seq, now),
        nonces=nonce_documents(outcome, accepted),
        chunks=verdict_chunks(outcome, seq),
        account_inserts=account_inserts, account_updates=account_updates,
        triangle_inserts=[{**document, **fields(i)} for i, document in
                          zip(created.tolist(), triangle_documents(triangle_keys[created], now))],
        triangle_updates=[({"_id": triangle_ids[i]}, {"$set": fields(i)})
                          for i in np.flatnonzero(written & stored).tolist()],
        triangle_stored=stored | written,
        children=[child for ids in children_of.values() for child in ids],
    )


def triangles_written(outcome: BatchOutcome) -> np.ndarray:
    """bool per triangle of the batch: the commit writes its document. That is every triangle the batch
    changed, except one it only brought into existence (active, no clicks, a child of a subdivision):
    its parent's `childrenIds` already says that, and it gets its document when it is first clicked."""
    prior, final = outcome.prior, outcome.final
    changed = (final.triangle_clicks != prior.triangle_clicks) | (final.triangle_state != prior.triangle_state)
    fresh = (final.triangle_state == TriangleState.ACTIVE) & (final.triangle_clicks == 0)
    return changed & ~fresh


def stored_after(outcome: BatchOutcome) -> np.ndarray:
    """bool per triangle of the batch: it has a document once the batch is committed."""
    return _stored(outcome.prior) | triangles_written(outcome)


def _stored(prior) -> np.ndarray:
    """Which triangles had a document; none, for state read from a store that keeps no documents."""
    if prior.triangle_stored is None:
        return np.zeros(len(prior.triangle_state), bool)
    return prior.triangle_stored


def subdivisions(outcome: BatchOutcome, triangle_keys: np.ndarray | None = None) -> dict[int, list[str]]:
    """Index (in the batch's keys) of each triangle the batch subdivided → its 4 children's ids."""
    final = outcome.final
    if triangle_keys is None:
        triangle_keys = mesh_ids.decode_ids(outcome.keys.triangles).keys
    subdivided = np.unique(outcome.row_triangle[outcome.subdivided_rows])
    subdivided = subdivided[final.triangle_state[subdivided] == TriangleState.SUBDIVIDED]
    if not len(subdivided):
        return {}
    children = mesh_ids.encode_keys(mesh_keys.child_keys(triangle_keys[subdivided]).reshape(-1)).to_pylist()
    return {i: children[4 * k:4 * k + 4] for k, i in enumerate(subdivided.tolist())}


def nonce_id(account: str, nonce: str) -> str:
    """`_id` of a used (account, nonce): accounts are always 42 characters, so it reads back whole."""
    return f"{account}:{nonce}"


def nonce_documents(outcome: BatchOutcome, accepted: np.ndarray | None = None) -> list[dict]:
    """One `nonces` document per accepted row."""
    if accepted is None:
        accepted = np.flatnonzero(pc.equal(outcome.verdicts.column("code"), Code.ACCEPTED.name)
                                  .to_numpy(zero_copy_only=False))
    take = pa.array(outcome.row_pair[accepted], pa.int64())
    ids = pc.binary_join_element_wise(pc.take(outcome.keys.nonce_accounts, take),
                                      pc.take(outcome.keys.nonces, take), ":")
    return [{"_id": value} for value in ids.to_pylist()]


def _account_writes(outcome: BatchOutcome, now: dt.datetime) -> tuple[list[dict], list[tuple[dict, dict]]]:
    keys, prior, final = outcome.keys, outcome.prior, outcome.final
    changed = np.flatnonzero(final.account_proof_count != prior.account_proof_count)
    addresses = pc.take(keys.accounts, pa.array(changed, pa.int64())).to_pylist()
    inserts, updates = [], []
    for i, address in zip(changed.tolist(), addresses):
        values = {
            "balanceMicro": Int64(final.account_balance_micro[i]),
            "lastProof": {"lat": float(final.account_last_lat[i]), "lon": float(final.account_last_lon[i]),
                          "ts": DatetimeMS(int(final.account_last_ts_ms[i]))},
            "proofCount": int(final.account_proof_count[i]),
            "updatedAt": now,
        }
        if prior.account_proof_count[i] == 0:
            inserts.append({"_id": address, **values, "createdAt": now})
        else:
            updates.append(({"_id": address}, {"$set": values}))
    return inserts, updates


def stored_table(outcome: BatchOutcome) -> pa.Table:
    """The batch's verdicts and proof fields in STORED_SCHEMA, long text cut (see STORED_TEXT_CHARS)."""
    verdicts, proofs = outcome.verdicts, outcome.proofs
    subdivided = np.zeros(verdicts.num_rows, bool)
    subdivided[outcome.subdivided_rows] = True
    columns = {name: verdicts.column(name) for name in VERDICT_SCHEMA.names}
    columns.update(account_key=attributed_account(verdicts), subdivided=pa.array(subdivided),
                   ts_ms=proofs.column("ts_ms"), timestamp=proofs.column("timestamp"),
                   lat=proofs.column("lat"), lon=proofs.column("lon"), accuracy=proofs.column("accuracy"),
                   signature=proofs.column("signature"))
    arrays = [bounded(columns[f.name]) if f.name in _TEXT else columns[f.name] for f in STORED_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=STORED_SCHEMA)


# Codes given before the signature was found to recover to the account: such a row may name any
# account, so it is kept in its batch's verdicts but never in that account's history.
_UNSIGNED_CODES = pa.array([code.name for code in Code if 0 < code <= Code.BAD_SIGNATURE])


def attributed_account(verdicts: pa.Table) -> pa.Array:
    """The lower-case account of each row whose signature recovered to it, else null."""
    signed = pc.invert(pc.is_in(verdicts.column("code"), value_set=_UNSIGNED_CODES))
    return pc.if_else(signed, pc.utf8_lower(verdicts.column("account")), pa.scalar(None, pa.string()))


def verdict_chunks(outcome: BatchOutcome, seq: int) -> list[dict]:
    table = stored_table(outcome)
    return [chunk_document(outcome.batch_id, k, first, table.slice(first, CHUNK_ROWS), seq)
            for k, first in enumerate(range(0, max(table.num_rows, 1), CHUNK_ROWS))]


def chunk_document(batch_id: str, k: int, first: int, rows: pa.Table, seq: int) -> dict:
    """The `verdicts` document of rows `first`.. of a batch (STORED_SCHEMA rows)."""
    accounts = pc.unique(rows.column("account_key").drop_null()).to_pylist()
    return {"_id": f"{batch_id}#{k:06d}", "batchId": batch_id, "seq": Int64(seq), "first": first,
            "rows": rows.num_rows, "accounts": accounts, "ipc": Binary(_ipc(rows))}


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def chunk_table(chunk: dict) -> pa.Table:
    """The STORED_SCHEMA rows of one verdict chunk document."""
    return pa.ipc.open_stream(bytes(chunk["ipc"])).read_all()


def verdicts_of(chunks: list[dict], rows: int) -> pa.Table:
    """The verdict table of a committed batch from its chunks (in `_id` order)."""
    tables = [chunk_table(chunk) for chunk in chunks]
    table = pa.concat_tables(tables) if tables else STORED_SCHEMA.empty_table()
    if table.num_rows != rows:
        raise ValueError(f"the store holds {table.num_rows} verdict rows for a batch of {rows}")
    return table.select(VERDICT_SCHEMA.names).cast(VERDICT_SCHEMA)


def bounded(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Strings longer than STORED_TEXT_CHARS cut there, with `…[cut from N characters]` after them."""
    lengths = pc.utf8_length(values)
    long = pc.fill_null(pc.greater(lengths, STORED_TEXT_CHARS), False)
    if not pc.any(long).as_py():
        return values
    cut = pc.binary_join_element_wise(pc.utf8_slice_codeunits(values, 0, STORED_TEXT_CHARS), "…[cut from ",
                                      pc.cast(lengths, pa.string()), " characters]", "")
    return pc.if_else(long, cut, values)


def _batch_document(outcome: BatchOutcome, seq: int, now: dt.datetime) -> dict:
    return {
        "_id": outcome.batch_id,
        "digest": outcome.digest,
        "inputDigest": outcome.input_digest,
        "counts": dict(outcome.counts),
        "rowCount": outcome.verdicts.num_rows,
        "seq": Int64(seq),
        "batchTime": DatetimeMS(outcome.batch_time_ms) if outcome.batch_time_ms is not None else None,
        "committedAt": now,
    }
