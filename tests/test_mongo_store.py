"""MongoStore against a real server: state round trips, guarded commits, atomicity, idempotent and
concurrent finalize (each test in a database of its own; see the fixtures in conftest.py)."""

from __future__ import annotations

import hashlib
import multiprocessing

import numpy as np
import pyarrow as pa
import pymongo
import pytest

from stepbatch import MemoryStore, Validator, mesh, read_proofs
from stepbatch.config import Config
from stepbatch.protocol import TriangleState, reward_micro
from stepbatch.store import layout, reads
from stepbatch.store.base import PriorState, StaleStateError, StateKeys, StoreError
from stepbatch.store.mongo import MongoStore
from stepbatch.store.reads import IN_CHUNK
from stepbatch.store.seed import existing_triangles
from stepbatch.store.statedigest import event_log_mismatches, replay_event_log, state_digest
from stepbatch.tools import gen
from stepbatch.validator import BatchConflictError
from stepbatch.verdicts import verdict_digest
from tests.strategies import point_in, signed_row

pytestmark = pytest.mark.mongo

KEYS = [hashlib.sha256(b"mongo-store-test-%d" % i).digest() for i in range(16)]
BASE = mesh.triangle_at(47.4979, 19.0402, 14)
T0_MS = 1_759_667_373_074
CONFIG = Config(signature_threads=2)


def _clicks(triangle: str, keys: range, t0_ms: int = T0_MS, nonce: str = "n") -> list[dict]:
    """One accepted-looking click on `triangle` per key, a second apart, each key a new account."""
    lat, lon = point_in(triangle, (1.0, 1.0, 1.0))
    return [signed_row(KEYS[k], triangle, lat, lon, t0_ms + 1_000 * i, f"{nonce}{k}")
            for i, k in enumerate(keys)]


def _outcome(store, rows, batch_id: str):
    with Validator(store, CONFIG) as validator:
        return validator.validate(read_proofs(rows), batch_id).outcome


def _collections_snapshot(db) -> dict:
    return {name: sorted(map(str, db[name].find({}, {"createdAt": 0, "updatedAt": 0})))
            for name in ("triangles", "accounts", "nonces", "verdicts", "batches", "meta")}


def _assert_state_equal(got: PriorState, want: PriorState) -> None:
    """The engine's state; `triangle_stored` (which triangles have a document) only where `want` says."""
    for name in PriorState.__dataclass_fields__:
        if name != "seq" and not (name == "triangle_stored" and want.triangle_stored is None):
            assert np.array_equal(getattr(got, name), getattr(want, name)), name


@pytest.fixture(scope="module")
def traffic():
    return gen.generate(walkers=12, proofs=600, seed=5)


def test_empty_database_has_no_state(mongo_store):
    keys = StateKeys(accounts=pa.array(["0x" + "ab" * 20]), triangles=pa.array([BASE]),
                     nonce_accounts=pa.array(["0x" + "ab" * 20]), nonces=pa.array(["n"]))
    _assert_state_equal(mongo_store.load_state(keys), PriorState.empty(keys))


@pytest.mark.both_servers
def test_commit_round_trips_through_load_state_beyond_one_query_of_keys(mongo_store, traffic, monkeypatch):
    # Servers that look $in ids up in the _id index take chunks of IN_CHUNK_INDEXED: this batch
    # is read in several chunks on every server.
    monkeypatch.setattr(reads, "IN_CHUNK_INDEXED", IN_CHUNK)
    monkeypatch.setattr(reads, "_IN_CHUNKS", {})
    mongo_store.add_triangles(traffic.triangles)
    outcome = _outcome(mongo_store, traffic.proofs, "round-trip")
    assert len(outcome.keys.triangles) > IN_CHUNK and len(outcome.keys.nonces) > IN_CHUNK
    mongo_store.commit(outcome)
    _assert_state_equal(mongo_store.load_state(outcome.keys), outcome.final)
    accepted = outcome.counts["ACCEPTED"]
    assert mongo_store.db.nonces.count_documents({}) == accepted == mongo_store.accepted_count()
    assert sum(chunk["rows"] for chunk in mongo_store.db.verdicts.find({})) == traffic.proofs.num_rows
    assert mongo_store.db.accounts.count_documents({"balanceMicro": {"$type": "long"}}) == \
        mongo_store.db.accounts.count_documents({})
    assert event_log_mismatches(mongo_store.db) == []


def test_committed_rebuilds_the_verdicts_and_digest(mongo_store, traffic):
    mongo_store.add_triangles(traffic.triangles)
    with Validator(mongo_store, CONFIG) as validator:
        result = validator.finalize(traffic.proofs.slice(0, 300), "rebuild")
    stored = mongo_store.committed("rebuild")
    assert stored.verdicts.equals(result.verdicts)
    assert (stored.digest, stored.counts) == (result.digest, result.counts)
    assert verdict_digest("rebuild", stored.verdicts) == result.digest
    assert mongo_store.committed("never-committed") is None


def test_clicks_update_the_triangle_and_the_account_documents(mongo_store):
    mongo_store.add_triangles([BASE])
    rows = _clicks(BASE, range(3))
    mongo_store.commit(_outcome(mongo_store, rows, "b1"))
    triangle = mongo_store.db.triangles.find_one({"_id": BASE})
    assert (triangle["clicks"], triangle["state"]) == (3, "active")
    assert triangle["lastClickAt"] == _utc(T0_MS + 2_000)
    account = mongo_store.db.accounts.find_one({"_id": rows[1]["account"].lower()})
    assert account["balanceMicro"] == reward_micro(14) and account["proofCount"] == 1
    assert account["lastProof"] == {"lat": rows[1]["lat"], "lon": rows[1]["lon"], "ts": _utc(T0_MS + 1_000)}


def _utc(ts_ms: int):
    import datetime as dt
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=ts_ms)


def _commit_elsewhere(uri: str, db_name: str, rows: list[dict], batch_id: str) -> None:
    """Another validator on the same database commits `rows`."""
    with MongoStore(uri, db_name) as other:
        other.commit(_outcome(other, rows, batch_id))


def test_commit_after_another_writer_clicked_its_triangle_is_stale_and_writes_nothing(
        mongo_uri, mongo_db_name, mongo_store):
    mongo_store.add_triangles([BASE])
    outcome = _outcome(mongo_store, _clicks(BASE, range(2)), "b1")
    _commit_elsewhere(mongo_uri, mongo_db_name, _clicks(BASE, range(5, 6), nonce="o"), "other")
    before = _collections_snapshot(mongo_store.db)
    with pytest.raises(StaleStateError):
        mongo_store.commit(outcome)
    assert _collections_snapshot(mongo_store.db) == before
    assert mongo_store.db.triangles.find_one({"_id": BASE})["clicks"] == 1


def test_commit_after_another_writer_moved_an_account_is_stale_and_writes_nothing(
        mongo_uri, mongo_db_name, mongo_store):
    mongo_store.add_triangles([BASE])
    mongo_store.commit(_outcome(mongo_store, _clicks(BASE, range(2)), "b1"))
    outcome = _outcome(mongo_store, _clicks(BASE, range(2), T0_MS + 60_000, nonce="m"), "b2")
    _commit_elsewhere(mongo_uri, mongo_db_name, _clicks(BASE, range(1), T0_MS + 60_000, nonce="o"), "other")
    before = _collections_snapshot(mongo_store.db)
    with pytest.raises(StaleStateError):
        mongo_store.commit(outcome)
    assert _collections_snapshot(mongo_store.db) == before
    account = mongo_store.db.accounts.find_one({"_id": _clicks(BASE, range(1))[0]["account"].lower()})
    assert account["proofCount"] == 2


def test_commit_whose_triangle_was_removed_meanwhile_is_stale(mongo_store):
    mongo_store.add_triangles([BASE])
    mongo_store.commit(_outcome(mongo_store, _clicks(BASE, range(1)), "b1"))
    outcome = _outcome(mongo_store, _clicks(BASE, range(1, 2), T0_MS + 60_000), "b2")
    mongo_store.db.triangles.delete_one({"_id": BASE})
    with pytest.raises(StaleStateError, match="gone"):
        mongo_store.commit(outcome)
    assert mongo_store.db.batches.count_documents({"_id": "b2"}) == 0


def test_commit_racing_the_first_proof_of_an_account_is_stale(mongo_store):
    mongo_store.add_triangles([BASE])
    rows = _clicks(BASE, range(2))
    outcome = _outcome(mongo_store, rows, "b1")
    mongo_store.db.accounts.insert_one({"_id": rows[0]["account"].lower(), "balanceMicro": 5,
                                        "proofCount": 1})
    mongo_store.db.triangles.update_one({"_id": BASE}, {"$set": {"clicks": 0}})
    with pytest.raises(StaleStateError):
        mongo_store.commit(outcome)
    assert mongo_store.db.batches.count_documents({}) == 0
    assert mongo_store.db.triangles.find_one({"_id": BASE})["clicks"] == 0


@pytest.mark.both_servers
def test_commit_of_a_nonce_used_meanwhile_is_stale(mongo_store):
    mongo_store.add_triangles([BASE])
    mongo_store.commit(_outcome(mongo_store, _clicks(BASE, range(1)), "b1"))
    rows = _clicks(BASE, range(1), T0_MS + 60_000, nonce="again")
    outcome = _outcome(mongo_store, rows, "b2")
    assert outcome.counts == {"ACCEPTED": 1}
    # Another writer used the same (account, nonce): the unique `_id` of `nonces` is what catches it.
    mongo_store.db.nonces.insert_one({"_id": f"{rows[0]['account'].lower()}:{rows[0]['nonce']}"})
    with pytest.raises(StaleStateError):
        mongo_store.commit(outcome)
    assert mongo_store.db.batches.count_documents({"_id": "b2"}) == 0
    assert mongo_store.db.triangles.find_one({"_id": BASE})["clicks"] == 1


def test_second_commit_of_a_batch_id_is_stale_and_writes_nothing(mongo_store):
    mongo_store.add_triangles([BASE])
    outcome = _outcome(mongo_store, _clicks(BASE, range(2)), "b1")
    mongo_store.commit(outcome)
    before = _collections_snapshot(mongo_store.db)
    with pytest.raises(StaleStateError):
        mongo_store.commit(outcome)
    assert _collections_snapshot(mongo_store.db) == before


@pytest.mark.both_servers
def test_failure_in_the_middle_of_a_commit_leaves_nothing_of_the_batch(mongo_uri, mongo_store):
    mongo_store.add_triangles([BASE])
    rows = _clicks(BASE, range(3)) + [dict(_clicks(BASE, range(3, 4))[0], lat=-10.0)]
    outcome = _outcome(mongo_store, rows, "doomed")
    assert outcome.counts == {"ACCEPTED": 3, "BAD_SIGNATURE": 1}
    with pymongo.MongoClient(mongo_uri) as admin:
        try:
            # Inserts of this commit: the batch record, the nonces, then the verdicts (the one that
            # fails, after the sequence number, the batch and the nonces went in).
            admin.admin.command("configureFailPoint", "failCommand", mode={"skip": 2, "times": 1},
                                data={"failCommands": ["insert"], "errorCode": 2, "appName": "stepbatch"})
        except pymongo.errors.OperationFailure as err:
            pytest.skip(f"server has no failpoints (start it with test commands): {err}")
        try:
            with pytest.raises(StoreError) as caught:
                mongo_store.commit(outcome)
        finally:
            admin.admin.command("configureFailPoint", "failCommand", mode="off")
    assert not isinstance(caught.value, StaleStateError)
    assert "failCommand" in str(caught.value.__cause__)
    db = mongo_store.db
    assert db.batches.count_documents({}) == 0
    assert db.nonces.count_documents({}) == 0
    assert db.verdicts.count_documents({}) == 0
    assert db.accounts.count_documents({}) == 0
    assert db.triangles.find_one({"_id": BASE})["clicks"] == 0
    outcome = _outcome(mongo_store, rows, "doomed")
    mongo_store.commit(outcome)
    assert db.triangles.find_one({"_id": BASE})["clicks"] == 3


def test_a_subdivision_makes_its_children_exist_and_a_first_click_writes_one(mongo_store, mongo_uri, mongo_db_name):
    children = mesh.children(BASE)
    mongo_store.add_triangles([BASE, children[1]])
    mongo_store.db.triangles.update_one({"_id": children[1]}, {"$set": {"clicks": 4}})
    mongo_store.commit(_outcome(mongo_store, _clicks(BASE, range(11)), "b1"))
    db = mongo_store.db
    parent = db.triangles.find_one({"_id": BASE})
    assert (parent["state"], parent["clicks"], parent["childrenIds"]) == ("subdivided", 11, children)
    # The subdivision wrote no child: the one seeded before keeps its document, the others exist by
    # their parent's state, read so by a validator with a cold cache and by the service's lookups.
    assert [doc["_id"] for doc in db.triangles.find({"parentId": BASE})] == [children[1]]
    keys = StateKeys(accounts=pa.array([], pa.string()), triangles=pa.array(children),
                     nonce_accounts=pa.array([], pa.string()), nonces=pa.array([], pa.string()))
    with MongoStore(mongo_uri, mongo_db_name, config=CONFIG) as cold:
        state = cold.load_state(keys)
        found = existing_triangles(cold, children)
    assert state.triangle_state.tolist() == [TriangleState.ACTIVE] * 4
    assert state.triangle_clicks.tolist() == [0, 4, 0, 0]
    assert state.triangle_stored.tolist() == [False, True, False, False]
    assert [(doc["_id"], doc["state"], doc["clicks"]) for doc in found] == [
        (child, "active", clicks) for child, clicks in zip(children, [0, 4, 0, 0])]
    # A fresh child's first click inserts its whole document.
    outcome = _outcome(mongo_store, _clicks(children[0], range(11, 13), T0_MS + 60_000), "b2")
    assert outcome.counts == {"ACCEPTED": 2}
    mongo_store.commit(outcome)
    assert mongo_store.writes["triangle_inserts"] == 1
    doc = db.triangles.find_one({"_id": children[0]})
    assert (doc["clicks"], doc["state"], doc["level"], doc["parentId"]) == (2, "active", 15, BASE)
    assert doc["polygon"] == mesh.polygon(children[0])
    assert replay_event_log(db).ended == {BASE: "subdivided"}


def test_children_clicked_in_the_batch_that_created_them_keep_their_clicks(mongo_store):
    child = mesh.children(BASE)[0]
    mongo_store.add_triangles([BASE])
    rows = _clicks(BASE, range(11)) + _clicks(child, range(11, 13), T0_MS + 20_000)
    outcome = _outcome(mongo_store, rows, "b1")
    assert outcome.counts == {"ACCEPTED": 13}
    assert outcome.prior.triangle_state[outcome.row_triangle[-1]] == TriangleState.MISSING
    mongo_store.commit(outcome)
    stored = mongo_store.db.triangles.find_one({"_id": child})
    assert (stored["clicks"], stored["state"], stored["parentId"]) == (2, "active", BASE)
    assert event_log_mismatches(mongo_store.db) == []


def test_commit_without_transactions_says_how_to_get_a_replica_set(mongo_store):
    mongo_store.add_triangles([BASE])
    outcome = _outcome(mongo_store, _clicks(BASE, range(1)), "b1")
    mongo_store.transactions = False
    with pytest.raises(StoreError, match=r"--replSet rs0.*rs\.initiate\(\)"):
        mongo_store.commit(outcome)


def test_finalize_twice_returns_the_stored_result_and_changes_nothing(mongo_store, traffic):
    mongo_store.add_triangles(traffic.triangles)
    batch = traffic.proofs.slice(0, 200)
    with Validator(mongo_store, CONFIG) as validator:
        first = validator.finalize(batch, "once")
        digest = state_digest(mongo_store.db)
        again = validator.finalize(batch, "once")
        assert state_digest(mongo_store.db) == digest
        assert (again.digest, again.counts) == (first.digest, first.counts)
        assert again.verdicts.equals(first.verdicts)
        with pytest.raises(BatchConflictError):
            validator.finalize(traffic.proofs.slice(200, 200), "once")
    assert state_digest(mongo_store.db) == digest


def _finalize_all(uri: str, db_name: str, batches: list[tuple[str, pa.Table]], start_together
                  ) -> dict[str, dict]:
    config = Config(signature_threads=1)
    with MongoStore(uri, db_name, config=config) as store, Validator(store, config) as validator:
        validator.validate(batches[0][1])  # compiles and warms up everything before the race
        start_together.wait(timeout=300)
        return {batch_id: validator.finalize(batch, batch_id).counts for batch_id, batch in batches}


@pytest.mark.both_servers
def test_concurrent_finalizers_end_in_the_one_by_one_state(mongo_uri, mongo_db_name, traffic):
    with MongoStore(mongo_uri, mongo_db_name) as store:
        store.add_triangles(traffic.triangles)
    chunks = [traffic.proofs.slice(start, 50) for start in range(0, 400, 50)]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(2) as pool:
        start_together = manager.Barrier(2)
        runs = [pool.apply_async(_finalize_all, (mongo_uri, mongo_db_name,
                                                 [(f"{who}{i}", chunk) for i, chunk in enumerate(chunks)],
                                                 start_together))
                for who in "AB"]
        counts = [run.get(timeout=300) for run in runs]

    with MongoStore(mongo_uri, mongo_db_name) as store:
        db = store.db
        assert event_log_mismatches(db) == []
        accepted = sum(c.get("ACCEPTED", 0) for run in counts for c in run.values())
        events = [row for chunk in db.verdicts.find({}) for row in layout.chunk_table(chunk).to_pylist()
                  if row["code"] == "ACCEPTED"]
        assert len(events) == accepted == len({(e["account_key"], e["nonce"]) for e in events})

    # Both processes finalized the same proofs: whatever the interleaving, each proof is accepted
    # once, exactly as in one validator applying the chunks in order.
    serial = MemoryStore(traffic.triangles)
    with Validator(serial, Config(signature_threads=2)) as validator:
        expected = set()
        for i, chunk in enumerate(chunks):
            rows = validator.finalize(chunk, f"serial{i}").verdicts.to_pylist()
            expected |= {(r["account"].lower(), r["nonce"], r["triangle_id"], r["reward_micro"],
                          r["click_number"]) for r in rows if r["code"] == "ACCEPTED"}
    assert {(e["account_key"], e["nonce"], e["triangle_id"], e["reward_micro"], e["click_number"])
            for e in events} == expected
