"""`stepbatch db migrate`: move a database of an earlier layout to the current one (`store.layout`).

Layout 2 differs from 3 only in the child documents each subdivision wrote, which layout 3 reads as
they are: moving it is rewriting its version number.

The first layout kept one `triangle_events` document per accepted proof (and per subdivision) and one
`rejections` document per rejected row. Each committed batch becomes its `verdicts` chunks (the rows
rebuilt from those documents, in batch order, with the proof fields the events kept) and its
accepted proofs become `nonces`; accounts and triangles are already in their final form. Batches are
moved in commit order, each in one transaction, so a migration that stops can be run again: batches
already moved are skipped. The old collections are dropped at the end.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa
from bson.int64 import Int64

from stepbatch.ingest.timestamps import epoch_ms
from stepbatch.protocol import Code
from stepbatch.store import database, layout
from stepbatch.store.base import StoreError


@dataclasses.dataclass
class MigrationReport:
    batches: int = 0
    rows: int = 0
    nonces: int = 0
    already_moved: int = 0


def migrate(client, db_name: str, progress=None) -> MigrationReport:
    db = client[db_name]
    report = MigrationReport()
    meta = db.meta.find_one({"_id": database.LAYOUT_ID})
    if meta is not None and meta.get("version") == layout.LAYOUT_VERSION and not _has_old(db):
        return report
    if meta is not None and meta.get("version") == 2 and not _has_old(db):
        db.meta.update_one({"_id": database.LAYOUT_ID}, {"$set": {"version": layout.LAYOUT_VERSION}})
        return report
    batches = list(db.batches.find({}, {"_id": 1, "rowCount": 1}).sort([("committedAt", 1), ("_id", 1)]))
    subdivided = {(e["triangleId"], e["payload"]["clickNumber"]) for e in db.triangle_events.find(
        {"eventType": "subdivide"}, {"triangleId": 1, "payload.clickNumber": 1})}
    for seq, batch in enumerate(batches, start=1):
        if db.verdicts.find_one({"batchId": batch["_id"]}, {"_id": 1}) is not None:
            report.already_moved += 1
            continue
        clicks = list(db.triangle_events.find({"batchId": batch["_id"], "eventType": "click"}))
        rejections = list(db.rejections.find({"batchId": batch["_id"]}))
        table = _rows(batch, clicks, rejections, subdivided)
        chunks = _chunks(batch["_id"], table, seq)
        with client.start_session() as session, session.start_transaction():
            if clicks:
                db.nonces.insert_many([{"_id": layout.nonce_id(e["account"], e["nonce"])} for e in clicks],
                                      ordered=False, session=session)
            db.verdicts.insert_many(chunks, ordered=False, session=session)
            db.batches.update_one({"_id": batch["_id"]}, {"$set": {"seq": Int64(seq)}}, session=session)
        report.batches += 1
        report.rows += table.num_rows
        report.nonces += len(clicks)
        if progress is not None:
            progress(report)
    for name in database.OLD_COLLECTIONS:
        db.drop_collection(name)
    for index in ("parentId_1", "level_1", "state_1"):
        if index in db.triangles.index_information():
            db.triangles.drop_index(index)
    db.meta.update_one({"_id": database.LAYOUT_ID}, {"$set": {"version": layout.LAYOUT_VERSION}}, upsert=True)
    db.meta.update_one({"_id": database.SEQ_ID}, {"$set": {"seq": Int64(len(batches) + 1)}}, upsert=True)
    database.ensure_schema(db)
    return report


def _has_old(db) -> bool:
    return any(db[name].find_one({}, {"_id": 1}) is not None for name in database.OLD_COLLECTIONS)


def _rows(batch: dict, clicks: list[dict], rejections: list[dict], subdivided: set) -> pa.Table:
    rows = [{
        "index": e["batchIndex"], "account": e["account"], "nonce": e["nonce"], "triangle_id": e["triangleId"],
        "code": Code.ACCEPTED.name, "message": e.get("message", ""),
        "reward_micro": int(e["payload"]["rewardMicro"]), "click_number": e["payload"]["clickNumber"],
        "speed_mps": e["payload"].get("speed"), "account_key": e["account"],
        "subdivided": (e["triangleId"], e["payload"]["clickNumber"]) in subdivided,
        "ts_ms": _ms(e["timestamp"]), "timestamp": None, "lat": e["payload"].get("lat"),
        "lon": e["payload"].get("lon"), "accuracy": e["payload"].get("accuracy"), "signature": e.get("signature"),
    } for e in clicks] + [{
        "index": r["index"], "account": r.get("account"), "nonce": r.get("nonce"), "triangle_id": r.get("triangleId"),
        "code": r["code"], "message": r.get("message", ""), "reward_micro": 0, "click_number": None,
        "speed_mps": r.get("speedMps"),
        "account_key": r["account"].lower() if isinstance(r.get("account"), str) else None,
        "subdivided": False, "ts_ms": None, "timestamp": None, "lat": None, "lon": None, "accuracy": None,
        "signature": None,
    } for r in rejections]
    rows.sort(key=lambda row: row["index"])
    if [row["index"] for row in rows] != list(range(batch["rowCount"])):
        raise StoreError(f"batch {batch['_id']}: the first layout holds {len(rows)} of its "
                         f"{batch['rowCount']} rows; it cannot be migrated whole")
    return pa.Table.from_pylist(rows, schema=layout.STORED_SCHEMA)


def _chunks(batch_id: str, table: pa.Table, seq: int) -> list[dict]:
    return [layout.chunk_document(batch_id, k, first, table.slice(first, layout.CHUNK_ROWS), seq)
            for k, first in enumerate(range(0, max(table.num_rows, 1), layout.CHUNK_ROWS))]


def _ms(moment) -> int | None:
    return None if moment is None else epoch_ms(moment)
