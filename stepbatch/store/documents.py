"""The documents of SPEC §5, built from arrays: triangles (for seeding and subdivision), the writes of
one `BatchOutcome`, and the verdict table rebuilt from what a committed batch left behind.

Everything a commit writes is built here, outside the transaction, so the transaction itself is only
round trips. Dates are BSON dates; money is Int64 micro-STEP.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import h3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bson.datetime_ms import DatetimeMS
from bson.int64 import Int64

from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys
from stepbatch.protocol import MAX_LEVEL, TRIANGLE_STATE_NAMES, Code, TriangleState
from stepbatch.schema import VERDICT_SCHEMA
from stepbatch.store.base import BatchOutcome

STATE_BY_NAME = {name: int(state) for state, name in TRIANGLE_STATE_NAMES.items()}
_STATE_NAMES = np.array([TRIANGLE_STATE_NAMES.get(TriangleState(s), "missing") for s in (0, 1, 2, -1)],
                        dtype=object)  # index -1 (MISSING) reads the last entry


def _h3_resolution(level: int) -> int:
    """The finest H3 resolution whose average hexagon edge is at most a quarter of the triangle's side
    (≈ 8000 km / 2^(level-1)): the centroid's cell then lies well inside the triangle."""
    side_km = 8000.0 / 2 ** (level - 1)
    for resolution in range(16):
        if h3.average_hexagon_edge_length(resolution, "km") <= side_km / 4:
            return resolution
    return 15


# level → H3 resolution of the `h3` field: levels 1-21 map to
# 0, 1, 1, 2, 3, 4, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 11, 12, 13, 14, 14.
H3_RESOLUTION_BY_LEVEL = (None,) + tuple(_h3_resolution(level) for level in range(1, MAX_LEVEL + 1))


def parent_keys(keys: np.ndarray) -> np.ndarray:
    """Packed key of each key's parent; -1 at level 1 (the key layout and arithmetic of
    stepbatch_kernels.mesh.parent_key, over a whole array)."""
    keys = np.asarray(keys, np.int64)
    level = (keys >> 40) & 31
    digit_shift = np.maximum(42 - 2 * level, 0)
    cleared = keys & ~(np.int64(3) << digit_shift)
    parents = (cleared & ~(np.int64(31) << 40)) | ((level - 1) << 40)
    return np.where(level > 1, parents, -1)


def triangle_documents(keys: np.ndarray, now: dt.datetime) -> list[dict]:
    """Fresh triangle documents (active, 0 clicks, no children) for packed keys of valid triangles."""
    keys = np.asarray(keys, np.int64)
    ids = mesh_ids.encode_keys(keys).to_pylist()
    parents = parent_keys(keys)
    parent_ids = mesh_ids.encode_keys(parents).to_pylist()
    levels = mesh_keys.key_levels(keys).tolist()
    faces = ((keys >> 45) & 31).tolist()  # the face bits of stepbatch_kernels.mesh's key layout
    rings = mesh_keys.rings_of_keys(keys).tolist()
    centroids = mesh_keys.centroids_of_keys(keys)
    cells = [h3.latlng_to_cell(lat, lon, H3_RESOLUTION_BY_LEVEL[level])
             for (lon, lat), level in zip(centroids.tolist(), levels)]
    path_start = len(mesh_ids.ID_PREFIX) + 2  # the face letter and the '-' after the level
    return [{
        "_id": triangle_id,
        "face": face,
        "level": level,
        "path": triangle_id[path_start + len(str(level)):][:level - 1],
        "parentId": parent_id,
        "childrenIds": [],
        "state": "active",
        "clicks": 0,
        "centroid": {"type": "Point", "coordinates": centroid},
        "polygon": {"type": "Polygon", "coordinates": [ring]},
        "h3": cell,
        "createdAt": now,
        "updatedAt": now,
    } for triangle_id, face, level, parent_id, ring, centroid, cell in zip(
        ids, faces, levels, parent_ids, rings, centroids.tolist(), cells)]


@dataclasses.dataclass
class CommitPlan:
    """The writes of one batch, per collection, in the order the transaction sends them."""

    batch: dict
    triangle_updates: list[tuple[dict, dict]]  # (filter, update) guarded on the prior (clicks, state)
    triangle_inserts: list[dict]  # created by a subdivision in this batch and known to it
    children_upserts: list[tuple[dict, dict]]  # $setOnInsert upserts: existing children stay as they are
    account_inserts: list[dict]  # accounts without an accepted proof before this batch
    account_updates: list[tuple[dict, dict]]  # (filter, update) guarded on the prior proofCount
    events: list[dict]
    rejections: list[dict]


def click_event_id(account: str, nonce: str) -> str:
    """`_id` of a click event: the (account, nonce) pair itself, so a nonce lookup is an _id lookup.

    Accounts are always 42 characters, so the pair reads back unambiguously."""
    return f"{account}:{nonce}"


def plan_commit(outcome: BatchOutcome, now: dt.datetime) -> CommitPlan:
    keys, prior, final = outcome.keys, outcome.prior, outcome.final
    proofs, verdicts = outcome.proofs, outcome.verdicts
    codes = np.asarray(pc.equal(verdicts.column("code"), Code.ACCEPTED.name).combine_chunks()
                       .to_numpy(zero_copy_only=False), bool)
    accepted = np.flatnonzero(codes)
    ts_ms = np.asarray(pc.fill_null(proofs.column("ts_ms"), 0), np.int64)
    triangle_ids = keys.triangles.to_pylist()
    triangle_keys = mesh_ids.decode_ids(keys.triangles).keys

    # Per triangle, the proof time of its last accepted click in this batch.
    last_click_ms = np.full(len(triangle_ids), -1, np.int64)
    np.maximum.at(last_click_ms, outcome.row_triangle[accepted], ts_ms[accepted])

    subdivided = np.unique(outcome.row_triangle[outcome.subdivided_rows])
    subdivided = subdivided[final.triangle_state[subdivided] == TriangleState.SUBDIVIDED]
    children = mesh_keys.child_keys(triangle_keys[subdivided]) if len(subdivided) else np.empty((0, 4), np.int64)
    children_ids = [mesh_ids.encode_keys(row).to_pylist() for row in children]
    children_of = dict(zip(subdivided.tolist(), children_ids))

    created = np.flatnonzero((prior.triangle_state == TriangleState.MISSING)
                             & (final.triangle_state != TriangleState.MISSING))
    known = dict(zip(triangle_ids, range(len(triangle_ids))))
    changed = np.flatnonzero((prior.triangle_state != TriangleState.MISSING)
                             & ((final.triangle_clicks != prior.triangle_clicks)
                                | (final.triangle_state != prior.triangle_state)))

    def click_fields(i: int) -> dict:
        fields = {"clicks": int(final.triangle_clicks[i]),
                  "state": _STATE_NAMES[final.triangle_state[i]], "updatedAt": now}
        if last_click_ms[i] >= 0:
            fields["lastClickAt"] = DatetimeMS(int(last_click_ms[i]))
        if i in children_of:
            fields["childrenIds"] = children_of[i]
        return fields

    triangle_updates = [(
        {"_id": triangle_ids[i], "clicks": int(prior.triangle_clicks[i]),
         "state": _STATE_NAMES[prior.triangle_state[i]]},
        {"$set": click_fields(i)}) for i in changed.tolist()]
    triangle_inserts = []
    for i, document in zip(created.tolist(), triangle_documents(triangle_keys[created], now)):
        document.update(click_fields(i))
        triangle_inserts.append(document)

    # Children the batch never named (or named but did not bring into existence) are upserted.
    new_children = [child for ids in children_ids for child in ids
                    if child not in known or final.triangle_state[known[child]] == TriangleState.MISSING]
    children_upserts = []
    if new_children:
        for document in triangle_documents(mesh_ids.decode_ids(new_children).keys, now):
            children_upserts.append(({"_id": document.pop("_id")}, {"$setOnInsert": document}))

    account_inserts, account_updates = _account_writes(outcome, now)
    return CommitPlan(
        batch=_batch_document(outcome, now),
        triangle_updates=triangle_updates, triangle_inserts=triangle_inserts,
        children_upserts=children_upserts, account_inserts=account_inserts,
        account_updates=account_updates, events=_events(outcome, accepted, ts_ms, children_of),
        rejections=_rejections(outcome, np.flatnonzero(~codes)),
    )


def _account_writes(outcome: BatchOutcome, now: dt.datetime) -> tuple[list[dict], list[tuple[dict, dict]]]:
    keys, prior, final = outcome.keys, outcome.prior, outcome.final
    changed = np.flatnonzero(final.account_proof_count != prior.account_proof_count)
    addresses = pc.take(keys.accounts, pa.array(changed, pa.int64())).to_pylist()
    inserts, updates = [], []
    for i, address in zip(changed.tolist(), addresses):
        fields = {
            "balanceMicro": Int64(final.account_balance_micro[i]),
            "lastProof": {"lat": float(final.account_last_lat[i]), "lon": float(final.account_last_lon[i]),
                          "ts": DatetimeMS(int(final.account_last_ts_ms[i]))},
            "proofCount": int(final.account_proof_count[i]),
            "updatedAt": now,
        }
        if prior.account_proof_count[i] == 0:
            inserts.append({"_id": address, **fields, "createdAt": now})
        else:
            updates.append(({"_id": address, "proofCount": int(prior.account_proof_count[i])},
                            {"$set": fields}))
    return inserts, updates


def _column(table: pa.Table, name: str, rows: np.ndarray) -> list:
    return pc.take(table.column(name), pa.array(rows, pa.int64())).to_pylist()


def _events(outcome: BatchOutcome, accepted: np.ndarray, ts_ms: np.ndarray,
            children_of: dict[int, list[str]]) -> list[dict]:
    """A click event per accepted row and a subdivide event per subdivided row, in batch order."""
    keys, proofs, verdicts = outcome.keys, outcome.proofs, outcome.verdicts
    take = pa.array(accepted, pa.int64())
    accounts = pc.take(keys.accounts, pa.array(outcome.row_account[accepted], pa.int64())).to_pylist()
    triangles = pc.take(keys.triangles, pa.array(outcome.row_triangle[accepted], pa.int64())).to_pylist()
    nonces = _column(proofs, "nonce", accepted)
    columns = zip(accepted.tolist(), accounts, nonces, triangles, ts_ms[accepted].tolist(),
                  _column(proofs, "signature", accepted), _column(proofs, "lat", accepted),
                  _column(proofs, "lon", accepted), _column(proofs, "accuracy", accepted),
                  pc.take(verdicts.column("reward_micro"), take).to_pylist(),
                  pc.take(verdicts.column("click_number"), take).to_pylist(),
                  pc.take(verdicts.column("speed_mps"), take).to_pylist(),
                  pc.take(verdicts.column("message"), take).to_pylist())
    batch_id = outcome.batch_id
    events = [{
        "_id": click_event_id(account, nonce),
        "triangleId": triangle,
        "eventType": "click",
        "timestamp": DatetimeMS(ts),
        "account": account,
        "nonce": nonce,
        "signature": signature,
        "batchId": batch_id,
        "batchIndex": row,
        "payload": {"rewardMicro": Int64(reward), "clickNumber": click, "lat": lat, "lon": lon,
                    "accuracy": accuracy, "speed": speed},
        "message": message,
    } for row, account, nonce, triangle, ts, signature, lat, lon, accuracy, reward, click, speed, message
        in columns]

    by_row = dict(zip(accepted.tolist(), range(len(events))))
    for row in outcome.subdivided_rows.tolist():
        click = events[by_row[row]]
        triangle_index = int(outcome.row_triangle[row])
        state = TriangleState(outcome.final.triangle_state[triangle_index])
        events.append({
            # A triangle subdivides (or is exhausted) once: a second attempt is a duplicate key.
            "_id": f"subdivide:{click['triangleId']}",
            "triangleId": click["triangleId"],
            "eventType": "subdivide",
            "timestamp": click["timestamp"],
            "account": click["account"],
            "batchId": batch_id,
            "batchIndex": row,
            "payload": {"clickNumber": click["payload"]["clickNumber"],
                        "state": TRIANGLE_STATE_NAMES[state],
                        "childrenIds": children_of.get(triangle_index, [])},
        })
    return events


def _rejections(outcome: BatchOutcome, rows: np.ndarray) -> list[dict]:
    verdicts, take = outcome.verdicts, pa.array(rows, pa.int64())
    texts = (bounded(pc.take(verdicts.column(name), take)).to_pylist()
             for name in ("account", "nonce", "triangle_id", "code", "message"))
    columns = zip(rows.tolist(), *texts, pc.take(verdicts.column("speed_mps"), take).to_pylist())
    return [{"batchId": outcome.batch_id, "index": row, "account": account, "nonce": nonce,
             "triangleId": triangle, "code": code, "message": message, "speedMps": speed}
            for row, account, nonce, triangle, code, message, speed in columns]


# A rejected row's text fields are whatever arrived (a 17 MB nonce is a rejection like any other);
# stored, each is cut to this many characters and marked, so that every batch fits in BSON's 16 MB.
STORED_TEXT_CHARS = 256


def bounded(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Strings longer than STORED_TEXT_CHARS cut there, with `…[cut from N characters]` after them."""
    lengths = pc.utf8_length(values)
    long = pc.fill_null(pc.greater(lengths, STORED_TEXT_CHARS), False)
    if not pc.any(long).as_py():
        return values
    cut = pc.binary_join_element_wise(pc.utf8_slice_codeunits(values, 0, STORED_TEXT_CHARS), "…[cut from ",
                                      pc.cast(lengths, pa.string()), " characters]", "")
    return pc.if_else(long, cut, values)


def _batch_document(outcome: BatchOutcome, now: dt.datetime) -> dict:
    return {
        "_id": outcome.batch_id,
        "digest": outcome.digest,
        "inputDigest": outcome.input_digest,
        "counts": dict(outcome.counts),
        "rowCount": outcome.verdicts.num_rows,
        "batchTime": DatetimeMS(outcome.batch_time_ms) if outcome.batch_time_ms is not None else None,
        "committedAt": now,
    }


def verdicts_from_documents(row_count: int, clicks: list[dict], rejections: list[dict]) -> pa.Table:
    """The verdict table of a committed batch from its click events and rejections.

    Accepted rows carry the account as stored (lower-case); every other field is as validated."""
    rows = ([(e["batchIndex"], e["account"], e["nonce"], e["triangleId"], Code.ACCEPTED.name,
              e["message"], int(e["payload"]["rewardMicro"]), e["payload"]["clickNumber"],
              e["payload"]["speed"]) for e in clicks]
            + [(r["index"], r["account"], r["nonce"], r["triangleId"], r["code"], r["message"], 0, None,
                r.get("speedMps")) for r in rejections])
    rows.sort(key=lambda row: row[0])
    if len(rows) != row_count or any(row[0] != i for i, row in enumerate(rows)):
        raise ValueError(f"the store holds {len(rows)} verdict rows for a batch of {row_count}")
    columns = list(zip(*rows)) if rows else [[] for _ in VERDICT_SCHEMA]
    return pa.Table.from_arrays([pa.array(list(values), field.type) for values, field in
                                 zip(columns, VERDICT_SCHEMA)], schema=VERDICT_SCHEMA)
