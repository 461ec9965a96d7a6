"""Backups that restore (SPEC §11): a copy taken while a writer commits is the state at one commit
sequence number; restoring it and replaying the archived batches after that number gives the
writer's present state; a restore never overwrites a database unasked; and the drill, a service
under load backed up, killed, its data directory deleted, restored and replayed."""

from __future__ import annotations

import hashlib
import random
import shutil
import threading

import httpx
import pymongo
import pytest

from stepbatch import Validator, mesh
from stepbatch.cli import main
from stepbatch.config import Config
from stepbatch.mesh.regions import IdRegion
from stepbatch.store import backup as backups
from stepbatch.store.archive import BatchArchive, archived_batches, replay_archive
from stepbatch.store.embedded import LOCK_NAME, EmbeddedServer, lock_holder
from stepbatch.store.mongo import MongoStore
from stepbatch.store.statedigest import event_log_mismatches, state_digest
from stepbatch.tools import gen
from tests.processes import server_process, wait_until
from tests.test_service import LEVEL, REGION, proof

pytestmark = pytest.mark.mongo

CONFIG = Config(signature_threads=1)
BATCH_ROWS = 100


@pytest.fixture(scope="module")
def traffic():
    return gen.generate(walkers=40, proofs=800, seed=11)


def _batches(traffic):
    proofs = traffic.proofs
    return [(f"writer-{k:04d}", proofs.slice(first, BATCH_ROWS), 1_759_667_373_074 + first)
            for k, first in enumerate(range(0, proofs.num_rows, BATCH_ROWS))]


@pytest.mark.both_servers
def test_a_backup_taken_while_a_writer_commits_restores_the_state_at_its_sequence(
        traffic, mongo_uri, mongo_db_name, tmp_path):
    archive = BatchArchive(tmp_path / "archive")
    restored_name = mongo_db_name + "_restored"
    batches = _batches(traffic)
    with MongoStore(mongo_uri, mongo_db_name, config=CONFIG) as store, \
            pymongo.MongoClient(mongo_uri, tz_aware=True) as client:
        store.declare(IdRegion.of_ids(traffic.triangles))
        committed = threading.Event()
        backed_up = threading.Event()
        errors = []

        def write():
            try:
                with Validator(store, CONFIG) as validator:
                    for k, (batch_id, proofs, batch_time) in enumerate(batches):
                        result = validator.finalize(proofs, batch_id, batch_time)
                        archive.write(result.outcome.prior.seq + 1, batch_id, batch_time, proofs)
                        if k == 2:
                            committed.set()
                        if k > 2 and not backed_up.is_set():
                            backed_up.wait(60)
            except BaseException as err:  # the assertion below shows it
                errors.append(err)
                committed.set()

        writer = threading.Thread(target=write)
        writer.start()
        try:
            committed.wait(60)
            report = backups.backup(client[mongo_db_name], tmp_path / "backup")
        finally:
            backed_up.set()
            writer.join(120)
        assert not errors, errors
        manifest = backups.read_manifest(tmp_path / "backup")
        assert manifest["seq"] == report.seq and manifest["stateDigest"] == report.state_digest
        assert {"triangles", "accounts", "nonces", "verdicts", "batches", "meta", "regions"} <= set(
            manifest["collections"])
        try:
            restored = client[restored_name]
            backups.restore(restored, tmp_path / "backup")
            # One sequence number: the batches it holds are a prefix of the writer's, and its state
            # is exactly what their verdicts say.
            held = sorted(doc["_id"] for doc in restored.batches.find({}, {"_id": 1}))
            assert 3 <= len(held) < len(batches) and held == [b[0] for b in batches[:len(held)]]
            assert manifest["collections"]["batches"]["documents"] == len(held)
            assert event_log_mismatches(restored) == []
            indexes = {spec["name"] for spec in restored.verdicts.list_indexes()}
            assert indexes == {spec["name"] for spec in client[mongo_db_name].verdicts.list_indexes()}

            with MongoStore(mongo_uri, restored_name, config=CONFIG) as restored_store, \
                    Validator(restored_store, CONFIG) as validator:
                replayed = replay_archive(validator, archive.directory, manifest["seq"])
            assert replayed.batches == len(batches) - len(held)
            assert state_digest(restored) == state_digest(client[mongo_db_name])
        finally:
            client.drop_database(restored_name)


@pytest.mark.both_servers
def test_restore_refuses_a_database_that_is_not_empty_without_force(
        traffic, mongo_uri, mongo_db_name, tmp_path, capsys):
    other = mongo_db_name + "_other"
    with MongoStore(mongo_uri, mongo_db_name, config=CONFIG) as store, Validator(store, CONFIG) as validator:
        store.declare(IdRegion.of_ids(traffic.triangles))
        batch_id, proofs, batch_time = _batches(traffic)[0]
        validator.finalize(proofs, batch_id, batch_time)

    def db(*args: str) -> tuple[int, str, str]:
        code = main(["--mongodb-uri", mongo_uri, "db", *args])
        out, err = capsys.readouterr()
        return code, out, err

    backup_dir = str(tmp_path / "b")
    try:
        code, out, err = db("backup", backup_dir, "--db", mongo_db_name)
        assert code == 0 and "commit sequence" in out, err
        code, _, err = db("backup", backup_dir, "--db", mongo_db_name)
        assert code == 1 and "not an empty directory" in err

        with pymongo.MongoClient(mongo_uri) as client:
            client[other].scratch.insert_one({"_id": "kept"})
            code, _, err = db("restore", backup_dir, "--db", other)
            assert code == 1 and "not empty" in err and "--force" in err
            assert len(err.strip().splitlines()) == 1
            assert client[other].scratch.find_one({"_id": "kept"}) is not None

            code, _, err = db("restore", backup_dir, "--db", other, "--force")
            assert code == 0, err
            assert "scratch" not in client[other].list_collection_names()
            assert state_digest(client[other]) == state_digest(client[mongo_db_name])

            (tmp_path / "b" / "manifest.json").unlink()
            code, _, err = db("restore", backup_dir, "--db", other, "--force")
            assert code == 1 and "manifest.json" in err
    finally:
        with pymongo.MongoClient(mongo_uri) as client:
            client.drop_database(other)


def _drill_proofs(n: int) -> list[dict]:
    """`n` proofs of `n` accounts on triangles spread over the service test's region."""
    rng = random.Random(24)
    west, south, east, north = REGION.bbox
    proofs = []
    for i in range(n):
        key = hashlib.sha256(b"stepbatch-drill-%d" % i).digest()
        lat, lon = rng.uniform(south, north), rng.uniform(west, east)
        proofs.append(proof(key, triangle_id=mesh.triangle_at(lat, lon, LEVEL), where=(lat, lon)))
    return proofs


class _Load:
    """Proofs posted by a few client threads until `stop()`; `answered` counts the answers."""

    def __init__(self, url: str, proofs: list[dict], clients: int = 6):
        self.answered = 0
        self._proofs = iter(proofs)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._post, args=(url,)) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _post(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not self._stopping.is_set():
                with self._lock:
                    document = next(self._proofs, None)
                if document is None:
                    return
                answer = client.post("/proof/submit", json=document)
                with self._lock:
                    self.answered += 1
                    if answer.status_code >= 500:
                        self.errors.append(answer.text)

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(120)


@pytest.mark.slow
def test_the_drill_restores_a_killed_services_database_and_replays_to_its_state(tmp_path, capsys):
    data_dir, archive, backup_dir = tmp_path / "data", tmp_path / "archive", tmp_path / "backup"
    # The embedded server of the data directory, whatever MONGODB_URI the suite runs with.
    env = {"STEPBATCH_DATA_DIR": str(data_dir), "MONGODB_URI": "", "STEPBATCH_SIGNATURE_THREADS": "1"}
    args = ["serve", "--port", "0", "--archive", str(archive), "--batch-size", "40", "--max-wait-ms", "20"]
    proofs = _drill_proofs(500)
    load = None
    with server_process(args, env=env) as service:
        attached = EmbeddedServer(data_dir / "db").start()
        try:
            with MongoStore(attached.uri, "step", config=CONFIG) as store:
                store.declare(REGION)
                load = _Load(service.url, proofs)
                wait_until(lambda: load.answered >= 150, timeout_s=120, what="150 answered proofs")
                assert main(["db", "backup", str(backup_dir), "--data-dir", str(data_dir / "db")]) == 0
                backed_up_at = load.answered
                wait_until(lambda: load.answered >= backed_up_at + 150, timeout_s=120,
                           what="150 more answered proofs")
                load.stop()
                assert not load.errors, load.errors[:3]
                expected = state_digest(store.db)
                answered = int(store.db.batches.count_documents({}))
        finally:
            if load is not None:
                load.stop()
            attached.close()
        service.process.kill()
        service.wait()
    wait_until(lambda: lock_holder(data_dir / "db" / LOCK_NAME) is None, what="the database server to die")
    shutil.rmtree(data_dir / "db")
    capsys.readouterr()

    manifest = backups.read_manifest(backup_dir)
    lacking = archived_batches(archive, manifest["seq"])
    assert lacking and manifest["collections"]["batches"]["documents"] + len(lacking) == answered
    code = main(["db", "restore", str(backup_dir), "--data-dir", str(data_dir / "db"), "--archive", str(archive)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"replayed {len(lacking):,} archived batches" in out
    assert out.strip().endswith(f"state digest {expected}"), out
