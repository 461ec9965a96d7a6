"""The database behind `MongoStore`: collections and indexes, the layout version, the commit sequence,
the declared regions of the mesh.

`regions` holds the declarations of `stepbatch.mesh.regions`: one document per levels region, and an
explicit id list as sorted packed keys in chunks of ID_CHUNK keys. The `meta` collection holds three
small documents: `layout` (the version of `stepbatch.store.layout`
the database was written with), `commitSeq` (advanced by every commit and by every seeding, so a
validator's cache can tell whether anyone else wrote) and `seededLevels` (the levels that have
triangle documents not created by a subdivision, so a subdivision knows when its children may exist).
"""

from __future__ import annotations

import contextlib
import re
import time

import numpy as np
from bson.binary import Binary
from bson.int64 import Int64
from pymongo.errors import BulkWriteError, PyMongoError

from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh.regions import IdRegion, LevelRegion, Regions
from stepbatch.store.base import StoreError, brief
from stepbatch.store.layout import LAYOUT_VERSION

DUPLICATE_KEY = 11000
ID_CHUNK = 1_000_000  # packed keys per `regions` document: 8 MB, half of BSON's limit
SEQ_ID, LAYOUT_ID, SEEDED_ID = "commitSeq", "layout", "seededLevels"
# Collections of the first layout (one document per event and per rejection), which `stepbatch db
# migrate` moves into `nonces` and `verdicts`.
OLD_COLLECTIONS = ("triangle_events", "rejections")


class LayoutError(StoreError):
    """The database was written with another layout; the message names the command that migrates it."""


def ensure_schema(db) -> bool:
    """Check the layout, create the collections' indexes (idempotent) and the meta documents; whether
    triangles.polygon has a 2dsphere index (one its operator created: stepbatch makes none)."""
    check_layout(db)
    db.meta.update_one({"_id": LAYOUT_ID}, {"$setOnInsert": {"version": LAYOUT_VERSION}}, upsert=True)
    db.meta.update_one({"_id": SEQ_ID}, {"$setOnInsert": {"seq": Int64(0)}}, upsert=True)
    # `triangles` has no secondary index: every update rewrites each index entry of the document on
    # SecantusDB (parentId, level and state took a triangle update from 0.53 to 1.29 ms), and what
    # reads a level uses `_id` ranges (see level_filter).
    db.verdicts.create_index("accounts")
    # Nor a 2dsphere index on polygon: nothing of stepbatch queries one (triangles_at walks the mesh),
    # and on the Rust server, whose $geoIntersects is exact, it made a triangle insert 50 → 163 µs
    # and a click update 171 → 249 µs. A tool that wants geo queries over materialized triangles
    # creates it: db.triangles.create_index([("polygon", "2dsphere")]).
    return any(key == [("polygon", "2dsphere")] for key in
               (index["key"] for index in db.triangles.index_information().values()))


def check_layout(db) -> None:
    """LayoutError for a database another layout wrote; nothing for a new one or one of ours."""
    layout = db.meta.find_one({"_id": LAYOUT_ID})
    if layout is not None and layout.get("version") == LAYOUT_VERSION:
        return
    if layout is not None and isinstance(layout.get("version"), int) and layout["version"] < LAYOUT_VERSION:
        raise LayoutError(f"database {db.name} has stepbatch layout {layout['version']}; move it to layout "
                          f"{LAYOUT_VERSION} with `stepbatch db migrate` (same MONGODB_URI and STEPBATCH_DB)")
    if layout is not None:
        raise LayoutError(f"database {db.name} has stepbatch layout {layout.get('version')}, this "
                          f"stepbatch reads layout {LAYOUT_VERSION}: a newer stepbatch wrote it")
    if any(db[name].find_one({}, {"_id": 1}) is not None for name in OLD_COLLECTIONS):
        raise LayoutError(f"database {db.name} was written with stepbatch's first layout (one document "
                          f"per event); move it to layout {LAYOUT_VERSION} with `stepbatch db migrate` "
                          f"(same MONGODB_URI and STEPBATCH_DB)")


def level_filter(level: int) -> dict:
    """A query for the triangles of one level by `_id` ranges, one per face: an id is
    `STEP-TRI-v1:{face letter}{level}-…`, and no level's digits followed by '-' begin another's."""
    return {"$or": [{"_id": {"$gte": f"{mesh_ids.ID_PREFIX}{chr(65 + face)}{level}-",
                             "$lt": f"{mesh_ids.ID_PREFIX}{chr(65 + face)}{level}."}} for face in range(20)]}


def transactions_work(db) -> bool:
    """Whether the server runs a multi-document transaction (one that is aborted, on a scratch
    collection): a standalone mongod refuses, a standalone SecantusDB does not."""
    try:
        with db.client.start_session() as session, session.start_transaction():
            db.stepbatch_transaction_probe.insert_one({"probe": True}, session=session)
            session.abort_transaction()
        return True
    except PyMongoError:
        return False


def read_seq(db, session=None) -> int:
    doc = db.meta.find_one({"_id": SEQ_ID}, session=session)
    return int(doc["seq"]) if doc is not None else 0


def advance_seq(db, expected: int, session=None) -> bool:
    """seq := expected + 1 if it is still `expected`; False if another writer moved it."""
    result = db.meta.update_one({"_id": SEQ_ID, "seq": Int64(expected)}, {"$set": {"seq": Int64(expected + 1)}},
                                session=session)
    return result.matched_count == 1


def record_seeding(db, levels) -> None:
    """Note levels that now have seeded triangles, and move the sequence so caches are re-read."""
    db.meta.update_one({"_id": SEEDED_ID}, {"$addToSet": {"levels": {"$each": sorted(set(levels))}}},
                       upsert=True)
    db.meta.update_one({"_id": SEQ_ID}, {"$inc": {"seq": Int64(1)}}, upsert=True)


def read_regions(db, session=None) -> Regions:
    regions, keys = [], []
    for doc in db.regions.find({}, session=session).sort("_id", 1):
        if doc.get("kind") == "ids":
            keys.append(np.frombuffer(bytes(doc["keys"]), "<i8"))
        else:
            regions.append(LevelRegion(int(doc["first"]), int(doc["last"]),
                                       tuple(doc["bbox"]) if doc.get("bbox") else None))
    if keys:
        regions.append(IdRegion(np.unique(np.concatenate(keys))))
    return Regions.of(regions)


def write_regions(db, regions: Regions) -> None:
    """Make `regions` the database's declarations, and move the sequence so caches are re-read."""
    docs = []
    for region in regions:
        if isinstance(region, LevelRegion):
            docs.append({"_id": f"levels:{region.first}-{region.last}:{region.bbox}", "kind": "levels",
                         "first": region.first, "last": region.last,
                         "bbox": list(region.bbox) if region.bbox is not None else None})
        else:
            for k, start in enumerate(range(0, len(region.keys), ID_CHUNK)):
                chunk = region.keys[start:start + ID_CHUNK].astype("<i8")
                docs.append({"_id": f"ids#{k:06d}", "kind": "ids", "count": len(chunk),
                             "keys": Binary(chunk.tobytes())})
    with db.client.start_session() as session, session.start_transaction():
        db.regions.delete_many({}, session=session)
        if docs:
            db.regions.insert_many(docs, session=session)
        db.meta.update_one({"_id": SEQ_ID}, {"$inc": {"seq": Int64(1)}}, upsert=True, session=session)


def declare(db, region, wait_s: float = 90.0) -> bool:
    """Add `region` to the declarations unless they cover it already; whether anything was written. A
    write conflict (a transaction a killed writer left open holds the sequence number until the
    server expires it) is retried for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        declared = read_regions(db)
        wanted = declared.plus(region)
        if wanted == declared:
            return False
        try:
            write_regions(db, wanted)
            return True
        except PyMongoError as err:
            if not err.has_error_label("TransientTransactionError") or time.monotonic() > deadline:
                raise
            time.sleep(min(0.05 * 2 ** attempt, 2.0))
            attempt += 1


def seeded_levels(db) -> set[int]:
    doc = db.meta.find_one({"_id": SEEDED_ID})
    return set(doc.get("levels", ())) if doc else set()


@contextlib.contextmanager
def translated_errors(what: str):
    """Re-raise driver errors inside the block as one StoreError saying what failed."""
    try:
        yield
    except PyMongoError as err:
        raise StoreError(f"{what} failed: {brief(err)}") from err


def insert_new(collection, docs: list[dict]) -> tuple[int, int]:
    """insert_many(ordered=False) that skips documents whose _id exists: (inserted, already there)."""
    if not docs:
        return 0, 0
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as err:
        errors = err.details.get("writeErrors", ())
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        return err.details.get("nInserted", 0), len(errors)
    return len(docs), 0


def is_duplicate_key(err: PyMongoError) -> bool:
    if isinstance(err, BulkWriteError):
        return any(e.get("code") == DUPLICATE_KEY for e in err.details.get("writeErrors", ()))
    return getattr(err, "code", None) == DUPLICATE_KEY


def redacted(uri: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", uri)
