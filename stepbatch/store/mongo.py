"""The MongoDB store (SPEC §5): state through a write-through cache, one transaction per batch.

A batch's prior state comes from the cache (`stepbatch.store.cache`) where it holds the keys, and
from `_id` queries for the rest. Its commit is one transaction that first advances the database's
commit sequence number, guarded on the number the batch was validated at: if any other writer
committed in between, the guard fails, the cache is emptied and the validator re-validates against
fresh state (`StaleStateError`). The layout of what it writes is `stepbatch.store.layout`.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import random
import re
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pymongo
from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo.errors import OperationFailure, PyMongoError

from stepbatch.config import Config
from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys
from stepbatch.mesh.regions import Region, Regions
from stepbatch.protocol import TriangleState
from stepbatch.store import database, documents, layout, reads
from stepbatch.store.base import BatchOutcome, CommittedBatch, PriorState, StaleStateError, StateKeys, StoreError, brief
from stepbatch.store.cache import StateCache
from stepbatch.store.embedded import EmbeddedServer

# Documents per insert command and per update command (an update costs the server ~0.25-0.4 ms, an
# insert ~0.06 ms): a client that dies mid-commit leaves the server at most one such command, well under
# a second of work, to finish, not a whole batch.
WRITE_CHUNK = 5_000
UPDATE_CHUNK = 1_000
TRANSIENT_RETRIES = 5

_REPLICA_SET_HOWTO = (
    "MongoDB transactions need a replica set: start mongod with --replSet rs0, run rs.initiate() once "
    "in mongosh, and connect with ?replicaSet=rs0 (or unset MONGODB_URI to use the embedded server)")


class MongoStore:
    """State in MongoDB. `uri=None` → `$MONGODB_URI` → else the embedded SecantusDB server, which the
    store then owns and stops on `close()`. `db` is the database name (SPEC §5: `step`);
    `client_options` go to the `MongoClient` (pool sizes, event listeners); `recreate` drops the
    database first, whatever layout it had (the demo's and the benchmarks')."""

    def __init__(self, uri: str | None = None, db: str = "step", config: Config | None = None,
                 cache: StateCache | None = None, client_options: dict | None = None, recreate: bool = False):
        self.config = config or Config.from_env()
        uri = uri or os.environ.get("MONGODB_URI") or self.config.mongodb_uri
        self.server: EmbeddedServer | None = None
        if not uri:
            self.server = EmbeddedServer(os.path.join(self.config.data_dir, "db")).start()
            uri = self.server.uri
        try:
            self.client = pymongo.MongoClient(
                uri, appname="stepbatch", retryWrites=True, serverSelectionTimeoutMS=15_000,
                connectTimeoutMS=10_000, tz_aware=True, **(client_options or {}))
            hello = self.client.admin.command("hello")
            if recreate:
                self.client.drop_database(db)
        except PyMongoError as err:
            self.close()
            raise StoreError(f"cannot reach MongoDB at {database.redacted(uri)}: {brief(err)}") from err
        except Exception:
            self.close()
            raise
        self.db = self.client[db]
        # Transactions need a replica-set member or a mongos router, on MongoDB; the embedded server
        # has them standalone too, which only trying one tells.
        self.transactions = ("setName" in hello or hello.get("msg") == "isdbgrid"
                             or database.transactions_work(self.db))
        self._state_db = self.client.get_database(db, codec_options=CodecOptions(
            tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_MS))
        self.cache = cache or StateCache()
        self._lock = threading.RLock()
        # Batches whose outcome is in the cache ahead of their commit → the nonce ids they use, and
        # their writes, built while the batch before them commits.
        self._staged: dict[str, set[str]] = {}
        self._plans: dict[str, tuple[BatchOutcome, layout.CommitPlan]] = {}
        self._seeded: set[int] | None = None
        self._regions: Regions | None = None
        # Documents written by committed batches, per kind: what a commit costs on this server.
        self.writes: collections.Counter = collections.Counter()
        try:
            self.geo_index = database.ensure_schema(self.db)
        except PyMongoError as err:
            self.close()
            raise StoreError(f"cannot create the collections and indexes of database {db}: {brief(err)}") from err
        except StoreError:
            self.close()
            raise

    def add_triangles(self, triangle_ids) -> int:
        """Make these triangles exist (active, 0 clicks); ones that exist are left as they are.
        ValueError for an id that is not canonical. Returns how many were inserted."""
        keys = np.array([mesh_ids.key_of(triangle_id) for triangle_id in triangle_ids], np.int64)
        now = dt.datetime.now(dt.timezone.utc)
        inserted = 0
        with database.translated_errors("adding triangles"):
            for start in range(0, len(keys), WRITE_CHUNK):
                docs = documents.triangle_documents(keys[start:start + WRITE_CHUNK], now)
                inserted += database.insert_new(self.db.triangles, docs)[0]
            if inserted:
                database.record_seeding(self.db, _levels(keys))
        return inserted

    @property
    def regions(self) -> Regions:
        """The declared regions of the mesh, as the database holds them now."""
        with database.translated_errors("reading the declared regions"):
            return database.read_regions(self._state_db)

    def _declared(self) -> Regions:
        """The declared regions as of the cache's sequence number (re-read when it moves)."""
        if self._regions is None:
            self._regions = database.read_regions(self._state_db)
        return self._regions

    def declare(self, region: Region) -> None:
        """Declare a region: its triangles exist from now on, without a document each. Declaring what is
        declared already writes nothing."""
        with self._lock, database.translated_errors("declaring a region"):
            if database.declare(self.db, region, self.config.commit_wait_s):
                self._regions = None

    # ------------------------------------------------------------------------------- reads

    def load_state(self, keys: StateKeys) -> PriorState:
        """Prior state from the cache, and from one `_id` query per IN_CHUNK keys it lacks."""
        try:
            with self._lock:
                seq = database.read_seq(self._state_db)
                if self.cache.seq is None or not (seq <= self.cache.seq <= seq + len(self._staged)):
                    self.cache.clear(seq)
                    self._seeded = None
                    self._regions = None
                state = PriorState.empty(keys)
                state.seq = self.cache.seq
                db, cache = self._state_db, self.cache
                reads.fill_accounts(db, cache, keys.accounts.to_pylist(), state)
                reads.fill_triangles(db, cache, keys.triangles.to_pylist(), state, self._declared())
                reads.fill_nonces(db, cache, keys, state, set().union(*self._staged.values()))
        except PyMongoError as err:
            raise StoreError(f"loading state failed: {brief(err)}") from err
        return state

    def committed(self, batch_id: str) -> CommittedBatch | None:
        try:
            batch = self.db.batches.find_one({"_id": batch_id})
            if batch is None:
                return None
            chunks = list(self.db.verdicts.find({"_id": {"$gte": f"{batch_id}#", "$lt": f"{batch_id}$"}})
                          .sort("_id", 1))
        except PyMongoError as err:
            raise StoreError(f"reading batch {batch_id} failed: {brief(err)}") from err
        try:
            verdicts = layout.verdicts_of(chunks, batch["rowCount"])
        except ValueError as err:
            raise StoreError(f"batch {batch_id} is incomplete in the store: {brief(err)}") from err
        return CommittedBatch(batch_id=batch_id, digest=batch["digest"], input_digest=batch["inputDigest"],
                              counts=dict(batch["counts"]), verdicts=verdicts)

    def batch_ids(self, prefix: str) -> list[str]:
        """Ids of the committed batches that start with `prefix`, read from the `_id` index (an
        anchored regex on a literal prefix is a range scan)."""
        with database.translated_errors(f"listing batches {prefix}*"):
            return [doc["_id"] for doc in self.db.batches.find(
                {"_id": {"$regex": "^" + re.escape(prefix)}}, {"_id": 1})]

    def accepted_count(self) -> int:
        """Accepted proofs the database holds: one used nonce each."""
        with database.translated_errors("counting accepted proofs"):
            return int(self.db.nonces.count_documents({}))

    def history(self, account: str, limit: int = 50, before_seq: int | None = None) -> pa.Table:
        """The account's proofs, accepted and rejected, newest first: `layout.STORED_SCHEMA` rows
        with the batch id and its commit sequence number in front. One query on `verdicts.accounts`."""
        account = account.lower()
        query = {"accounts": account}
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        tables = []
        with database.translated_errors(f"reading the history of {account}"):
            for chunk in self.db.verdicts.find(query).sort([("seq", -1), ("_id", -1)]):
                rows = layout.chunk_table(chunk)
                rows = rows.filter(pc.equal(rows.column("account_key"), account))
                rows = rows.add_column(0, "seq", pa.array([int(chunk["seq"])] * rows.num_rows, pa.int64()))
                tables.append(rows.add_column(0, "batch_id", pa.array([chunk["batchId"]] * rows.num_rows)))
                if sum(t.num_rows for t in tables) >= limit:
                    break
        if not tables:
            return pa.table({"batch_id": pa.array([], pa.string()), "seq": pa.array([], pa.int64()),
                             **{f.name: pa.array([], f.type) for f in layout.STORED_SCHEMA}})
        table = pa.concat_tables(tables)
        order = pc.sort_indices(table, [("seq", "descending"), ("index", "descending")])
        return table.take(order).slice(0, limit)

    # ------------------------------------------------------------------------------ commit

    def stage(self, outcome: BatchOutcome) -> None:
        """Put the batch's effects in the cache ahead of its commit, so the next batch validates
        against the state after it while it commits (see `stepbatch.pipeline`), and build its writes
        meanwhile, so that the database goes from one commit to the next without waiting for them."""
        plan = self._plan(outcome, dt.datetime.now(dt.timezone.utc))
        with self._lock:
            self._cache_outcome(outcome, plan)
            self._staged[outcome.batch_id] = {doc["_id"] for doc in plan.nonces}
            self._plans[outcome.batch_id] = (outcome, plan)

    def discard_staged(self) -> None:
        """Forget every staged outcome (and so the cache): their commits will not happen."""
        with self._lock:
            self._staged.clear()
            self._plans.clear()
            self.cache.clear()

    def commit(self, outcome: BatchOutcome, also=None) -> None:
        """Write the outcome in one transaction; StaleStateError if another writer committed since
        the batch's state was loaded (or wrote one of its keys). `also(db, session)` makes further
        writes in the same transaction (the consensus app's `{height, appHash}`)."""
        if not self.transactions:
            raise StoreError(f"cannot commit batch {outcome.batch_id}: the server does not support "
                             f"transactions. {_REPLICA_SET_HOWTO}")
        with self._lock:
            staged, plan = self._plans.pop(outcome.batch_id, (None, None))
        now = dt.datetime.now(dt.timezone.utc)
        if staged is not outcome:
            plan = self._plan(outcome, now)
        plan.batch["committedAt"] = now
        try:
            self._transact(outcome.batch_id, outcome.prior.seq, plan, also)
        except BaseException:
            self.discard_staged()
            raise
        self.writes.update(batches=1, nonces=len(plan.nonces), verdict_chunks=len(plan.chunks),
                           account_inserts=len(plan.account_inserts), account_updates=len(plan.account_updates),
                           triangle_inserts=len(plan.triangle_inserts), triangle_updates=len(plan.triangle_updates))
        with self._lock:
            if self._staged.pop(outcome.batch_id, None) is None:
                self._cache_outcome(outcome, plan)

    def _cache_outcome(self, outcome: BatchOutcome, plan: layout.CommitPlan) -> None:
        """The state after the batch into the cache, the children of its subdivisions included: a
        child that was missing (or that nothing cached) exists now, without a document of its own.
        A child at a seeded level may have a document, so where the cache does not hold it, it is
        left to be read."""
        self.cache.apply(outcome, plan.triangle_stored)
        children = plan.children
        if not children:
            return
        if self._seeded is None:
            self._seeded = database.seeded_levels(self._state_db)
        fresh = (int(TriangleState.ACTIVE), 0, False)
        for child, level in zip(children, _levels(mesh_ids.decode_ids(children).keys)):
            entry = self.cache.triangles.get(child)
            if (entry is None and level not in self._seeded) or (
                    entry is not None and entry[0] == TriangleState.MISSING):
                self.cache.put_triangle(child, fresh)

    @staticmethod
    def _plan(outcome: BatchOutcome, now: dt.datetime) -> layout.CommitPlan:
        if outcome.prior.seq is None:
            raise StoreError(f"batch {outcome.batch_id} was not validated against this store")
        return layout.plan_commit(outcome, outcome.prior.seq + 1, now)

    def _transact(self, batch_id: str, seq: int, plan: layout.CommitPlan, also) -> None:
        for attempt in range(TRANSIENT_RETRIES):
            try:
                with self.client.start_session() as session:
                    with session.start_transaction():
                        self._write(seq, plan, session)
                        if also is not None:
                            also(self.db, session)
                return
            except StaleStateError:
                raise
            except PyMongoError as err:
                if database.is_duplicate_key(err):
                    raise StaleStateError(f"batch {batch_id}: a key it writes was written meanwhile "
                                          f"({brief(err)})") from err
                if err.has_error_label("TransientTransactionError"):
                    if attempt + 1 < TRANSIENT_RETRIES:
                        # A write conflict: another transaction holds one of our documents. Give it
                        # time to finish; the sequence guard then tells whether it committed.
                        time.sleep(random.uniform(0.5, 1.0) * 0.05 * 2 ** attempt)
                        continue
                    raise StaleStateError(f"batch {batch_id}: kept conflicting with concurrent "
                                          f"writers ({brief(err)})") from err
                raise StoreError(f"commit of batch {batch_id} failed and was rolled back: {brief(err)}") from err

    def _write(self, seq: int, plan: layout.CommitPlan, session) -> None:
        """The batch's writes, every one built beforehand."""
        db = self.db
        # The sequence number first: a concurrent writer conflicts here, before any other write.
        if not database.advance_seq(db, seq, session):
            raise StaleStateError(f"batch {plan.batch['_id']}: another writer committed since its state "
                                  f"was loaded")
        db.batches.insert_one(plan.batch, session=session)
        _insert(db.nonces, plan.nonces, session)
        _insert(db.verdicts, plan.chunks, session)
        _insert(db.accounts, plan.account_inserts, session)
        _updates(db.accounts, plan.account_updates, "accounts", session)
        _insert(db.triangles, plan.triangle_inserts, session)
        _updates(db.triangles, plan.triangle_updates, "triangles", session)

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


def _updates(collection, updates: list, what: str, session) -> None:
    """Apply ({_id}, update) as `update` commands of UPDATE_CHUNK statements. The sequence number
    guards them (see `stepbatch.store.layout`); one that finds no document to update means the
    document was removed since the batch's state was loaded.

    The command is built here rather than through `bulk_write`, whose per-update objects and checks
    cost the commit thread ~14 µs per update (35,524 updates of 10 six-thousand-proof batches: ~0.5 s
    of a 4.4 s commit, half of which is the server's)."""
    for start in range(0, len(updates), UPDATE_CHUNK):
        part = updates[start:start + UPDATE_CHUNK]
        reply = collection.database.command("update", collection.name, ordered=False, session=session,
                                            updates=[{"q": query, "u": update} for query, update in part])
        if reply.get("writeErrors"):
            error = reply["writeErrors"][0]
            raise OperationFailure(error.get("errmsg", "write error"), error.get("code"), reply)
        if reply.get("n", 0) != len(part):
            raise StaleStateError(f"{len(part) - reply.get('n', 0)} of the batch's {what} are gone "
                                  f"since its state was loaded")


def _insert(collection, docs: list[dict], session) -> None:
    for start in range(0, len(docs), WRITE_CHUNK):
        collection.insert_many(docs[start:start + WRITE_CHUNK], ordered=False, session=session)


def _levels(keys: np.ndarray) -> list[int]:
    return mesh_keys.key_levels(keys).tolist()


