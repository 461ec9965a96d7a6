"""The state layer: the write-through cache, the commit sequence, and commits overlapped with validation."""

from __future__ import annotations

import pymongo
import pytest

from stepbatch import MemoryStore, Validator, mesh
from stepbatch.config import Config
from stepbatch.pipeline import Pipeline, PipelineError, finalize_all
from stepbatch.store.base import StaleStateError, StoreError
from stepbatch.store.database import LayoutError
from stepbatch.store.mongo import MongoStore
from stepbatch.store.statedigest import event_log_mismatches, state_digest
from stepbatch.tools import gen
from tests.strategies import _T0_MS, ACCOUNT_KEYS, point_in, signed_row

pytestmark = pytest.mark.mongo

CONFIG = Config(signature_threads=2)
TRIANGLE = mesh.triangle_at(47.4979, 19.0402, 14)
BATCH = 150


@pytest.fixture(scope="module")
def traffic():
    # Walkers that come back every batch, subdivisions on the way, replays across batches.
    return gen.generate(walkers=40, proofs=1500, seed=9)


def batches(traffic):
    return [(traffic.proofs.slice(i, BATCH), f"b{i}", None) for i in range(0, traffic.proofs.num_rows, BATCH)]


def sequential(traffic) -> tuple[list[str], list[str]]:
    """Codes and digests of the batches finalized one after another in memory."""
    codes, digests = [], []
    with Validator(MemoryStore(traffic.triangles), CONFIG) as validator:
        for batch, batch_id, _ in batches(traffic):
            result = validator.finalize(batch, batch_id)
            codes += result.verdicts.column("code").to_pylist()
            digests.append(result.digest)
    return codes, digests


@pytest.mark.both_servers
def test_overlapped_commits_give_the_one_by_one_verdicts_and_state(traffic, mongo_store):
    mongo_store.add_triangles(traffic.triangles)
    codes, digests = [], []
    with Validator(mongo_store, CONFIG) as validator:
        for _batch_id, result in finalize_all(validator, batches(traffic)):
            codes += result.verdicts.column("code").to_pylist()
            digests.append(result.digest)
    assert codes == traffic.proofs.column("expected_code").to_pylist()
    assert (codes, digests) == sequential(traffic)
    assert event_log_mismatches(mongo_store.db) == []
    assert "NONCE_REPLAY" in codes and mongo_store.db.triangles.count_documents({"state": "subdivided"})


class ConflictOnce(MongoStore):
    """Plays another writer moving the state under one batch's first commit."""

    def __init__(self, *args, conflict_on: str, fail_with=StaleStateError, **kwargs):
        super().__init__(*args, **kwargs)
        self.conflict_on, self.fail_with = conflict_on, fail_with

    def commit(self, outcome):
        if outcome.batch_id == self.conflict_on:
            self.conflict_on = None
            self.discard_staged()
            raise self.fail_with(f"batch {outcome.batch_id}: moved under it")
        super().commit(outcome)


def test_a_commit_that_finds_its_state_moved_redoes_it_and_every_batch_after_it(traffic, mongo_uri,
                                                                                mongo_db_name):
    with ConflictOnce(mongo_uri, mongo_db_name, config=CONFIG, conflict_on="b300") as store:
        store.add_triangles(traffic.triangles)
        with Validator(store, CONFIG) as validator:
            results = list(finalize_all(validator, batches(traffic)))
        digests = [result.digest for _, result in results]
        assert digests == sequential(traffic)[1]
        assert event_log_mismatches(store.db) == []


def test_a_commit_that_fails_outright_commits_nothing_after_it(traffic, mongo_uri, mongo_db_name):
    with ConflictOnce(mongo_uri, mongo_db_name, config=CONFIG, conflict_on="b300",
                      fail_with=StoreError) as store:
        store.add_triangles(traffic.triangles)
        with Validator(store, CONFIG) as validator, Pipeline(validator) as pipeline:
            futures = [pipeline.submit(batch, batch_id) for batch, batch_id, _ in batches(traffic)[:3]]
            with pytest.raises(StoreError, match="moved under it"):
                futures[2].result()
            with pytest.raises(PipelineError):
                for batch, batch_id, _ in batches(traffic)[3:5]:
                    pipeline.submit(batch, batch_id).result()
        assert sorted(doc["_id"] for doc in store.db.batches.find({})) == ["b0", "b150"]
        assert event_log_mismatches(store.db) == []


def test_the_cache_answers_a_validator_that_is_the_only_writer(traffic, mongo_store):
    mongo_store.add_triangles(traffic.triangles)
    with Validator(mongo_store, CONFIG) as validator:
        validator.finalize(traffic.proofs.slice(0, BATCH), "first")
        misses = mongo_store.cache.misses
        validator.validate(traffic.proofs.slice(0, BATCH), "again")
    assert mongo_store.cache.misses == misses
    figures = mongo_store.cache.figures()
    assert figures["accounts"] > 0 and figures["nonces"] == mongo_store.accepted_count() and figures["bytes"] > 0


def honest(i: int, nonce: str) -> dict:
    lat, lon = point_in(TRIANGLE, (1, 1, 1))
    return signed_row(ACCOUNT_KEYS[0], TRIANGLE, lat, lon, _T0_MS + 60_000 * i, nonce)


@pytest.mark.both_servers
def test_another_writer_empties_the_cache_so_its_writes_are_seen(mongo_uri, mongo_db_name):
    with MongoStore(mongo_uri, mongo_db_name, config=CONFIG) as mine, \
            MongoStore(mongo_uri, mongo_db_name, config=CONFIG) as theirs:
        mine.add_triangles([TRIANGLE])
        with Validator(mine, CONFIG) as me, Validator(theirs, CONFIG) as them:
            assert me.finalize([honest(0, "a")], "1").counts == {"ACCEPTED": 1}
            assert them.finalize([honest(1, "b")], "2").counts == {"ACCEPTED": 1}
            # Their nonce "b" is used and their click counted, though my cache never saw either.
            result = me.finalize([honest(2, "b"), honest(3, "c")], "3")
    assert result.verdicts.column("code").to_pylist() == ["NONCE_REPLAY", "ACCEPTED"]
    assert result.verdicts.column("click_number").to_pylist() == [None, 3]


def test_a_database_of_the_first_layout_is_refused_with_the_command_that_migrates_it(mongo_uri, mongo_db_name):
    with pymongo.MongoClient(mongo_uri) as client:
        client[mongo_db_name].triangle_events.insert_one({"_id": "0xab:n", "eventType": "click"})
    with pytest.raises(LayoutError, match="stepbatch db migrate"):
        MongoStore(mongo_uri, mongo_db_name, config=CONFIG)


def test_state_digest_does_not_depend_on_how_often_the_mesh_was_seeded(traffic, mongo_uri, mongo_db_name):
    digests = []
    for name, seedings in ((mongo_db_name, 1), (mongo_db_name + "_b", 3)):
        with MongoStore(mongo_uri, name, config=CONFIG) as store:
            for _ in range(seedings):
                store.add_triangles(traffic.triangles)
                store.add_triangles([TRIANGLE])
            with Validator(store, CONFIG) as validator:
                validator.finalize(traffic.proofs.slice(0, BATCH), "only")
            digests.append(state_digest(store.db))
            if name != mongo_db_name:
                store.client.drop_database(name)
    assert digests[0] == digests[1]


def _first_layout(db, rows: list[dict]) -> None:
    """A batch as stepbatch's first layout stored it: events, a rejection, the batch record."""
    import datetime as dt

    from bson.int64 import Int64

    from stepbatch.store.documents import triangle_documents

    now = dt.datetime.now(dt.timezone.utc)
    db.triangles.insert_many(triangle_documents(mesh.decode_ids([TRIANGLE]).keys, now))
    account = rows[0]["account"].lower()
    db.triangle_events.insert_one({
        "_id": f"{account}:{rows[0]['nonce']}", "triangleId": TRIANGLE, "eventType": "click",
        "timestamp": dt.datetime(2025, 10, 5, tzinfo=dt.timezone.utc), "account": account,
        "nonce": rows[0]["nonce"], "signature": rows[0]["signature"], "batchId": "old", "batchIndex": 0,
        "payload": {"rewardMicro": Int64(61), "clickNumber": 1, "lat": rows[0]["lat"], "lon": rows[0]["lon"],
                    "accuracy": 10.0, "speed": None}, "message": "accepted"})
    db.rejections.insert_one({"batchId": "old", "index": 1, "account": account, "nonce": "x",
                              "triangleId": TRIANGLE, "code": "TOO_FAST", "message": "too fast", "speedMps": 99.0})
    db.batches.insert_one({"_id": "old", "digest": "d", "inputDigest": "i", "rowCount": 2,
                           "counts": {"ACCEPTED": 1, "TOO_FAST": 1}, "committedAt": now})
    db.accounts.insert_one({"_id": account, "balanceMicro": Int64(61), "proofCount": 1,
                            "lastProof": {"lat": rows[0]["lat"], "lon": rows[0]["lon"],
                                          "ts": dt.datetime(2025, 10, 5, tzinfo=dt.timezone.utc)}})
    db.triangles.update_one({"_id": TRIANGLE}, {"$set": {"clicks": 1}})


def test_db_migrate_moves_a_first_layout_database_and_validation_goes_on(mongo_uri, mongo_db_name, capsys):
    import os

    from stepbatch.cli import main

    rows = [honest(0, "a")]
    with pymongo.MongoClient(mongo_uri) as client:
        _first_layout(client[mongo_db_name], rows)
    os.environ.update(STEPBATCH_DB=mongo_db_name)
    try:
        assert main(["--mongodb-uri", mongo_uri, "db", "migrate"]) == 0
        assert main(["--mongodb-uri", mongo_uri, "db", "migrate"]) == 0  # again: nothing to do
    finally:
        del os.environ["STEPBATCH_DB"]
    assert "moved 1 batches (2 rows, 1 accepted proofs)" in capsys.readouterr().err
    with MongoStore(mongo_uri, mongo_db_name, config=CONFIG) as store:
        stored = store.committed("old").verdicts
        assert stored.column("code").to_pylist() == ["ACCEPTED", "TOO_FAST"]
        assert event_log_mismatches(store.db) == []
        assert store.db.list_collection_names().count("triangle_events") == 0
        with Validator(store, CONFIG) as validator:
            result = validator.finalize([honest(0, "a"), honest(1, "b")], "new")
    assert result.verdicts.column("code").to_pylist() == ["NONCE_REPLAY", "ACCEPTED"]
    assert result.verdicts.column("click_number").to_pylist() == [None, 2]


def test_a_layout_2_database_is_migrated_by_its_version_and_holds_the_same_state(traffic, mongo_uri, mongo_db_name,
                                                                                 monkeypatch):
    """Layout 2 wrote the four children of every subdivision; layout 3 reads them as they are."""
    import datetime as dt

    from stepbatch.cli import main
    from stepbatch.store.database import LAYOUT_ID
    from stepbatch.store.documents import triangle_documents

    first, rest = batches(traffic)[:5], batches(traffic)[5:7]
    names = (mongo_db_name, mongo_db_name + "_v2")
    for name in names:
        with MongoStore(mongo_uri, name, config=CONFIG) as store, Validator(store, CONFIG) as validator:
            store.add_triangles(traffic.triangles)
            for batch, batch_id, _ in first:
                validator.finalize(batch, batch_id)
    with pymongo.MongoClient(mongo_uri, tz_aware=True) as client:
        old = client[names[1]]
        parents = [doc["_id"] for doc in old.triangles.find({"state": "subdivided"}, {"_id": 1})]
        assert parents
        children = [child for parent in parents for child in mesh.children(parent)]
        stored = {doc["_id"] for doc in old.triangles.find({"_id": {"$in": children}}, {"_id": 1})}
        old.triangles.insert_many(triangle_documents(
            mesh.decode_ids([c for c in children if c not in stored]).keys, dt.datetime.now(dt.timezone.utc)))
        old.meta.update_one({"_id": LAYOUT_ID}, {"$set": {"version": 2}})
    with pytest.raises(LayoutError, match="layout 2; move it to layout 3 with `stepbatch db migrate`"):
        MongoStore(mongo_uri, names[1], config=CONFIG)
    monkeypatch.setenv("STEPBATCH_DB", names[1])
    assert main(["--mongodb-uri", mongo_uri, "db", "migrate"]) == 0
    outcomes = []
    for name in names:
        with MongoStore(mongo_uri, name, config=CONFIG) as store, Validator(store, CONFIG) as validator:
            outcomes.append(([validator.finalize(batch, batch_id).digest for batch, batch_id, _ in rest],
                             state_digest(store.db)))
            assert event_log_mismatches(store.db) == []
    assert outcomes[0] == outcomes[1]
    with pymongo.MongoClient(mongo_uri) as client:
        client.drop_database(names[1])


def test_recreate_starts_over_whatever_layout_the_database_had(mongo_uri, mongo_db_name):
    from stepbatch.store.database import LAYOUT_ID

    with pymongo.MongoClient(mongo_uri) as client:
        client[mongo_db_name].meta.insert_one({"_id": LAYOUT_ID, "version": 1})
    with pytest.raises(LayoutError):
        MongoStore(mongo_uri, mongo_db_name, config=CONFIG)
    with MongoStore(mongo_uri, mongo_db_name, config=CONFIG, recreate=True) as store:
        assert store.db.meta.find_one({"_id": LAYOUT_ID})["version"] == 3
        assert store.accepted_count() == 0
