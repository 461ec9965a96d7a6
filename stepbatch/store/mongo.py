"""The MongoDB store of SPEC §5: state lookups in a few round trips, one transaction per batch.

This module and `embedded` are the only ones that talk to pymongo; its errors are re-raised here as
`StoreError` (or `StaleStateError` when another writer moved the state a batch was validated
against), with the driver's error chained.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pymongo
from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from stepbatch import mesh
from stepbatch.config import Config
from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys
from stepbatch.mesh import levels as mesh_levels
from stepbatch.store import documents
from stepbatch.store.base import (
    BatchOutcome,
    CommittedBatch,
    PriorState,
    StaleStateError,
    StateKeys,
    StoreError,
    brief,
)
from stepbatch.store.embedded import EmbeddedServer

# Keys per `{_id: {$in: [...]}}` query. SecantusDB re-applies `$in` linearly to every matched
# document, so a query costs ~ chunk² on top of its round trip (one query of 1,000 ids: 0.6 s; of
# 10,000: 59 s). Measured on 5,000 triangle-id lookups in an 82k-triangle collection (2 shared
# cores, best of 3): chunks of 10 / 20 / 40 / 60 / 100 / 150 / 250 ids took
# 77 / 59 / 58 / 64 / 80 / 105 / 153 µs per id.
IN_CHUNK = 40
TRANSIENT_RETRIES = 5
DUPLICATE_KEY = 11000

_REPLICA_SET_HOWTO = (
    "MongoDB transactions need a replica set: start mongod with --replSet rs0, run rs.initiate() once "
    "in mongosh, and connect with ?replicaSet=rs0 (or unset MONGODB_URI to use the embedded server)")


class MongoStore:
    """State in MongoDB. `uri=None` → `$MONGODB_URI` → else the embedded SecantusDB server, which the
    store then owns and stops on `close()`. `db` is the database name (SPEC §5: `step`)."""

    def __init__(self, uri: str | None = None, db: str = "step", config: Config | None = None):
        self.config = config or Config.from_env()
        uri = uri or os.environ.get("MONGODB_URI") or self.config.mongodb_uri
        self.server: EmbeddedServer | None = None
        if not uri:
            self.server = EmbeddedServer(os.path.join(self.config.data_dir, "db")).start()
            uri = self.server.uri
        try:
            self.client = pymongo.MongoClient(
                uri, appname="stepbatch", retryWrites=True, serverSelectionTimeoutMS=15_000,
                connectTimeoutMS=10_000, tz_aware=True)
            hello = self.client.admin.command("hello")
        except PyMongoError as err:
            self.close()
            raise StoreError(f"cannot reach MongoDB at {_redacted(uri)}: {brief(err)}") from err
        except Exception:
            self.close()
            raise
        # Transactions need a replica-set member or a mongos router.
        self.transactions = "setName" in hello or hello.get("msg") == "isdbgrid"
        self.db = self.client[db]
        self._state_db = self.client.get_database(db, codec_options=CodecOptions(
            tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_MS))
        try:
            self.geo_index = ensure_schema(self.db)
        except PyMongoError as err:
            self.close()
            raise StoreError(f"cannot create the collections and indexes of database {db}: {brief(err)}") from err

    def add_triangles(self, triangle_ids) -> int:
        """Make these triangles exist (active, 0 clicks); ones that exist are left as they are.
        ValueError for an id that is not canonical. Returns how many were inserted."""
        keys = np.array([mesh_ids.key_of(triangle_id) for triangle_id in triangle_ids], np.int64)
        now = dt.datetime.now(dt.timezone.utc)
        inserted = 0
        with translated_errors("adding triangles"):
            for start in range(0, len(keys), 5_000):
                docs = documents.triangle_documents(keys[start:start + 5_000], now)
                inserted += insert_new(self.db.triangles, docs)[0]
        return inserted

    # ------------------------------------------------------------------------------- reads

    def load_state(self, keys: StateKeys) -> PriorState:
        """Prior state in one `_id` query per IN_CHUNK keys of each kind (accounts, triangles, then
        the nonce pairs of accounts the store already holds), each with a projection."""
        state = PriorState.empty(keys)
        try:
            self._load_accounts(keys.accounts, state)
            self._load_triangles(keys.triangles, state)
            self._load_nonces(keys, state)
        except PyMongoError as err:
            raise StoreError(f"loading state failed: {brief(err)}") from err
        return state

    def _find_in(self, collection: str, ids: pa.Array, projection: dict) -> tuple[pa.Array, list[dict]]:
        """Documents whose _id is in `ids`, chunked (see IN_CHUNK), and their _ids as an Arrow array."""
        values = ids.to_pylist()
        found: list[dict] = []
        coll = self._state_db[collection]
        for start in range(0, len(values), IN_CHUNK):
            found.extend(coll.find({"_id": {"$in": values[start:start + IN_CHUNK]}}, projection))
        return pa.array([doc["_id"] for doc in found], pa.string()), found

    def _load_accounts(self, accounts: pa.Array, state: PriorState) -> None:
        found_ids, found = self._find_in("accounts", accounts,
                                         {"balanceMicro": 1, "proofCount": 1, "lastProof": 1})
        if not found:
            return
        at = _positions(found_ids, accounts)
        state.account_balance_micro[at] = [int(doc.get("balanceMicro", 0)) for doc in found]
        state.account_proof_count[at] = [int(doc.get("proofCount", 0)) for doc in found]
        last = [doc.get("lastProof") or {} for doc in found]
        has_last = np.array(["ts" in proof for proof in last], bool)
        state.account_has_last[at] = has_last
        state.account_last_lat[at] = [float(proof.get("lat", 0.0)) for proof in last]
        state.account_last_lon[at] = [float(proof.get("lon", 0.0)) for proof in last]
        state.account_last_ts_ms[at] = [int(proof["ts"]) if "ts" in proof else 0 for proof in last]

    def _load_triangles(self, triangles: pa.Array, state: PriorState) -> None:
        found_ids, found = self._find_in("triangles", triangles, {"state": 1, "clicks": 1})
        if not found:
            return
        at = _positions(found_ids, triangles)
        try:
            state.triangle_state[at] = [documents.STATE_BY_NAME[doc["state"]] for doc in found]
        except KeyError as err:
            raise StoreError(f"a stored triangle has an unknown state: {brief(err)}") from err
        state.triangle_clicks[at] = [int(doc.get("clicks", 0)) for doc in found]

    def _load_nonces(self, keys: StateKeys, state: PriorState) -> None:
        """Only accounts with an accepted proof can have used a nonce; an account the store does not
        hold yet is inserted, not updated, at commit, so a concurrent first proof still conflicts."""
        known = pa.array(np.flatnonzero(state.account_proof_count > 0), pa.int64())
        if len(known) == 0 or len(keys.nonces) == 0:
            return
        candidates = np.flatnonzero(pc.is_in(keys.nonce_accounts, pc.take(keys.accounts, known))
                                    .to_numpy(zero_copy_only=False))
        if candidates.size == 0:
            return
        take = pa.array(candidates, pa.int64())
        event_ids = pc.binary_join_element_wise(pc.take(keys.nonce_accounts, take),
                                                pc.take(keys.nonces, take), ":")
        found_ids, _ = self._find_in("triangle_events", event_ids, {"_id": 1})
        if len(found_ids):
            state.nonce_used[candidates[_positions(found_ids, event_ids)]] = True

    def committed(self, batch_id: str) -> CommittedBatch | None:
        try:
            batch = self.db.batches.find_one({"_id": batch_id})
            if batch is None:
                return None
            clicks = list(self.db.triangle_events.find(
                {"batchId": batch_id, "eventType": "click"},
                {"batchIndex": 1, "account": 1, "nonce": 1, "triangleId": 1, "message": 1,
                 "payload.rewardMicro": 1, "payload.clickNumber": 1, "payload.speed": 1}))
            rejections = list(self.db.rejections.find({"batchId": batch_id}, {"_id": 0, "batchId": 0}))
        except PyMongoError as err:
            raise StoreError(f"reading batch {batch_id} failed: {brief(err)}") from err
        try:
            verdicts = documents.verdicts_from_documents(batch["rowCount"], clicks, rejections)
        except ValueError as err:
            raise StoreError(f"batch {batch_id} is incomplete in the store: {brief(err)}") from err
        return CommittedBatch(batch_id=batch_id, digest=batch["digest"], input_digest=batch["inputDigest"],
                              counts=dict(batch["counts"]), verdicts=verdicts)

    def batch_ids(self, prefix: str) -> list[str]:
        """Ids of the committed batches that start with `prefix`, read from the `_id` index (an
        anchored regex on a literal prefix is a range scan)."""
        with translated_errors(f"listing batches {prefix}*"):
            return [doc["_id"] for doc in self.db.batches.find(
                {"_id": {"$regex": "^" + re.escape(prefix)}}, {"_id": 1})]

    # ------------------------------------------------------------------------------ commit

    def commit(self, outcome: BatchOutcome) -> None:
        """Write the outcome in one transaction; StaleStateError if a guard finds the state moved."""
        if not self.transactions:
            raise StoreError(f"cannot commit batch {outcome.batch_id}: the server does not support "
                             f"transactions. {_REPLICA_SET_HOWTO}")
        plan = documents.plan_commit(outcome, dt.datetime.now(dt.timezone.utc))
        for attempt in range(TRANSIENT_RETRIES):
            try:
                with self.client.start_session() as session:
                    with session.start_transaction():
                        self._write(plan, session)
                return
            except StaleStateError:
                raise
            except PyMongoError as err:
                if _is_duplicate_key(err):
                    raise StaleStateError(
                        f"batch {outcome.batch_id}: a key it writes was written meanwhile ({brief(err)})") from err
                if err.has_error_label("TransientTransactionError"):
                    if attempt + 1 < TRANSIENT_RETRIES:
                        # A write conflict: another transaction holds one of our documents. Give it
                        # time to finish; our guards then tell whether what it wrote matters to us.
                        time.sleep(random.uniform(0.5, 1.0) * 0.05 * 2 ** attempt)
                        continue
                    raise StaleStateError(f"batch {outcome.batch_id}: kept conflicting with "
                                          f"concurrent writers ({brief(err)})") from err
                raise StoreError(f"commit of batch {outcome.batch_id} failed and was rolled back: "
                                 f"{brief(err)}") from err

    def _write(self, plan: documents.CommitPlan, session) -> None:
        db = self.db
        # The batch record goes first: a concurrent commit of the same batch id fails at once.
        db.batches.insert_one(plan.batch, session=session)
        _guarded_updates(db.triangles, plan.triangle_updates, "triangles", session)
        _guarded_updates(db.accounts, plan.account_updates, "accounts", session)
        if plan.account_inserts:
            db.accounts.insert_many(plan.account_inserts, ordered=False, session=session)
        if plan.triangle_inserts:
            db.triangles.insert_many(plan.triangle_inserts, ordered=False, session=session)
        if plan.children_upserts:
            db.triangles.bulk_write([UpdateOne(*op, upsert=True) for op in plan.children_upserts],
                                    ordered=False, session=session)
        if plan.events:
            db.triangle_events.insert_many(plan.events, ordered=False, session=session)
        if plan.rejections:
            db.rejections.insert_many(plan.rejections, ordered=False, session=session)

    # --------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self.server is not None:
            self.server.close()
            self.server = None

    def __enter__(self) -> "MongoStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _guarded_updates(collection, updates: list, what: str, session) -> None:
    """Apply (filter, update) pairs whose filters hold the state the batch was validated against;
    any that no longer matches means another writer moved it."""
    if not updates:
        return
    result = collection.bulk_write([UpdateOne(*op) for op in updates], ordered=False, session=session)
    if result.matched_count != len(updates):
        raise StaleStateError(f"{len(updates) - result.matched_count} of the batch's {what} changed "
                              f"since its state was loaded")


def ensure_schema(db) -> bool:
    """Create SPEC §5's indexes (idempotent); whether triangles.polygon has its 2dsphere index, which
    it gets only where the server's geo queries are exact (see geo_lookup_is_exact)."""
    db.triangles.create_index("parentId")
    db.triangles.create_index("level")
    db.triangles.create_index("state")
    # Subdivide events carry no nonce, so uniqueness covers click events only.
    db.triangle_events.create_index([("account", 1), ("nonce", 1)], unique=True,
                                    partialFilterExpression={"eventType": "click"},
                                    name="account_nonce_unique")
    db.triangle_events.create_index([("batchId", 1), ("batchIndex", 1)])
    db.triangle_events.create_index("triangleId")
    db.rejections.create_index([("batchId", 1), ("index", 1)], unique=True)
    if not geo_lookup_is_exact(db):
        return False
    try:
        db.triangles.create_index([("polygon", "2dsphere")])
    except OperationFailure:
        return False
    return True


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


_GEO_EXACT: dict[tuple, bool] = {}
_GEO_PROBE_POINTS = ((89.9, 10.0), (48.85, 2.35), (-33.9, 151.2), (-60.0, -60.0))


def geo_lookup_is_exact(db) -> bool:
    """Whether `$geoIntersects` on this server answers SPEC §3's spherical containment exactly.

    A 2dsphere index reads polygon edges as geodesics, which is the mesh's geometry; a server whose
    geo support only approximates it (SecantusDB 0.7 misses points near the poles and matches
    neighbours of points well inside a face) fails this probe, and then gets no 2dsphere index at
    all: its index keys cost 15-50 ms per triangle written, which would dominate every commit.
    Probed once per server and process, on the 20 faces of level 1 in a scratch collection.
    """
    cache_key = (db.client.address,)
    if cache_key in _GEO_EXACT:
        return _GEO_EXACT[cache_key]
    probe = db["stepbatch_geo_probe"]
    keys = next(mesh_levels.iter_level_keys(1))
    ids = mesh_ids.encode_keys(keys).to_pylist()
    rings = mesh_keys.rings_of_keys(keys).tolist()
    try:
        probe.drop()
        probe.insert_many([{"_id": i, "polygon": {"type": "Polygon", "coordinates": [ring]}}
                           for i, ring in zip(ids, rings)])
        probe.create_index([("polygon", "2dsphere")])
        exact = True
        for lat, lon in _GEO_PROBE_POINTS:
            point = {"type": "Point", "coordinates": [lon, lat]}
            found = {doc["_id"] for doc in probe.find({"polygon": {"$geoIntersects": {"$geometry": point}}},
                                                      {"_id": 1})}
            exact = exact and found == {i for i in ids if mesh.contains(i, lat, lon)}
    except OperationFailure:
        exact = False
    finally:
        probe.drop()
    _GEO_EXACT[cache_key] = exact
    return exact


def _positions(found: pa.Array, keys: pa.Array) -> np.ndarray:
    """Index in `keys` of each found id (every found id is one of the keys)."""
    return np.asarray(pc.index_in(found, value_set=keys).to_numpy(zero_copy_only=False), np.int64)


def _is_duplicate_key(err: PyMongoError) -> bool:
    if isinstance(err, BulkWriteError):
        return any(e.get("code") == DUPLICATE_KEY for e in err.details.get("writeErrors", ()))
    return getattr(err, "code", None) == DUPLICATE_KEY


def _redacted(uri: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", uri)
