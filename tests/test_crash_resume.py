"""Crash safety of `stepbatch replay` (issue 4): a replay killed with SIGKILL after some committed
batches, then run again with `--resume`, ends in the same database state and writes the same
verdicts as a replay that was never interrupted."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import time
import uuid

import pyarrow.parquet as pq
import pymongo
import pytest

from stepbatch.store.statedigest import event_log_mismatches, state_digest

pytestmark = [pytest.mark.mongo, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parent.parent
BATCH_ROWS = 150
PROOFS = 3000
BATCHES = PROOFS // BATCH_ROWS
# Columns that depend on when and how a batch was validated, not on what was decided.
TIMING_COLUMNS = ["batch_seconds"]


def replay_command(proofs: pathlib.Path, out: pathlib.Path, *extra) -> list[str]:
    return [sys.executable, "-m", "stepbatch", "replay", str(proofs), "--triangles",
            str(proofs.with_suffix(".triangles.json")), "--batch-size", str(BATCH_ROWS),
            "--out", str(out), "--quiet", *extra]


def environment(mongo_uri: str, db_name: str) -> dict:
    return {**os.environ, "MONGODB_URI": mongo_uri, "STEPBATCH_DB": db_name}


@pytest.fixture(scope="module")
def proofs(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("crash") / "traffic.parquet"
    subprocess.run([sys.executable, "-m", "stepbatch", "gen", "--walkers", "60", "--proofs",
                    str(PROOFS), "--seed", "9", "--out", str(path)], cwd=ROOT, check=True,
                   capture_output=True)
    return path


@pytest.fixture(scope="module")
def uninterrupted(proofs, mongo_uri, tmp_path_factory):
    """(state digest, verdict table) of a replay that runs to the end in a database of its own."""
    db_name = f"stepbatch_test_{uuid.uuid4().hex[:12]}"
    out = tmp_path_factory.mktemp("reference") / "verdicts.parquet"
    subprocess.run(replay_command(proofs, out), cwd=ROOT, env=environment(mongo_uri, db_name),
                   check=True, capture_output=True, timeout=300)
    with pymongo.MongoClient(mongo_uri) as client:
        digest = state_digest(client[db_name])
        client.drop_database(db_name)
    return digest, pq.read_table(out).drop_columns(TIMING_COLUMNS)


def kill_after_commits(command: list[str], env: dict, batches, at_least: int) -> int:
    """Start `command`, SIGKILL it once `batches` holds `at_least` documents; the count then."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while batches.count_documents({}) < at_least:
            assert process.poll() is None, f"replay ended early: {process.stderr.read()!r}"
            assert time.monotonic() < deadline, "replay committed no batch in time"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return batches.count_documents({})


@pytest.mark.parametrize("seed", [1, 2])
def test_a_replay_killed_and_resumed_ends_in_the_state_and_verdicts_of_an_uninterrupted_one(
        seed, proofs, uninterrupted, mongo_uri, mongo_db_name, tmp_path):
    rng = random.Random(seed)
    env = environment(mongo_uri, mongo_db_name)
    out = tmp_path / "verdicts.parquet"
    with pymongo.MongoClient(mongo_uri) as client:
        db = client[mongo_db_name]
        # A first crash, then a crash of the resumed run, each a random number of batches in.
        first = kill_after_commits(replay_command(proofs, out), env, db.batches,
                                   rng.randint(1, BATCHES // 2))
        assert 0 < first < BATCHES
        assert not out.exists()
        second = kill_after_commits(replay_command(proofs, out, "--resume"), env, db.batches,
                                    rng.randint(first + 1, BATCHES - 2))
        assert first < second < BATCHES

        resumed = subprocess.run(replay_command(proofs, out, "--resume"), cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert f"resumed after row {second * BATCH_ROWS:,}" in resumed.stdout
        assert db.batches.count_documents({}) == BATCHES

        reference_digest, reference_verdicts = uninterrupted
        assert state_digest(db) == reference_digest
        assert event_log_mismatches(db) == []

    verdicts = pq.read_table(out).drop_columns(TIMING_COLUMNS)
    assert verdicts.column("row").to_pylist() == list(range(PROOFS))
    assert verdicts.to_pydict() == reference_verdicts.to_pydict()


def test_resuming_with_another_batch_size_is_refused_with_one_line(
        proofs, mongo_uri, mongo_db_name, tmp_path):
    env = environment(mongo_uri, mongo_db_name)
    out = tmp_path / "verdicts.parquet"
    with pymongo.MongoClient(mongo_uri) as client:
        kill_after_commits(replay_command(proofs, out), env, client[mongo_db_name].batches, 2)
    command = replay_command(proofs, out, "--resume")
    command[command.index("--batch-size") + 1] = str(BATCH_ROWS * 2 + 1)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "--batch-size" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


# ------------------------------------------------------------------- crashes in the middle of a commit


def wait_for_commits(batches, process: subprocess.Popen, at_least: int) -> None:
    """Return once `batches` holds `at_least` documents, the process still running."""
    deadline = time.monotonic() + 120
    while batches.count_documents({}) < at_least:
        assert process.poll() is None, f"replay ended early: {process.stderr.read()!r}"
        assert time.monotonic() < deadline, "replay committed no batch in time"
        time.sleep(0.01)


def hold_next_commit(admin, db, process: subprocess.Popen) -> None:
    """Hold the replay's next transaction after its first write (the commit sequence number), with a
    failpoint of the server's test commands, and return once it is held: a write to the sequence
    number then conflicts. The probe's own transaction is aborted, so it changes nothing; a replay
    transaction it meets first is only retried."""
    admin.admin.command("configureFailPoint", "failCommand", mode={"times": 1},
                        data={"failCommands": ["insert"], "blockConnection": True, "blockTimeMS": 120_000,
                              "appName": "stepbatch"})
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, f"replay ended early: {process.stderr.read()!r}"
        assert time.monotonic() < deadline, "no commit was held in time"
        try:
            with db.client.start_session() as session:
                session.start_transaction()
                db.meta.update_one({"_id": "commitSeq"}, {"$set": {"probe": True}}, session=session)
                session.abort_transaction()
        except pymongo.errors.PyMongoError as err:
            if err.has_error_label("TransientTransactionError"):
                return
            raise
        time.sleep(0.01)


def start_replay(proofs, out, uri: str, *extra) -> subprocess.Popen:
    return subprocess.Popen(replay_command(proofs, out, *extra), cwd=ROOT, env=environment(uri, "crash"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    process.stderr.close()


def nothing_partial(db) -> int:
    """The number of committed batches, after checking that the state is exactly what the accepted
    proofs of those batches give (a batch's writes are all there or none are)."""
    assert event_log_mismatches(db) == []
    return db.batches.count_documents({})


@pytest.mark.both_servers
def test_a_client_and_a_server_killed_mid_commit_leave_nothing_partial_and_a_resumed_replay_ends_alike(
        proofs, uninterrupted, db_server, tmp_path):
    if db_server == "uri":
        pytest.skip("kills an embedded server of its own")
    from stepbatch.store.embedded import EmbeddedServer

    out = tmp_path / "verdicts.parquet"
    server = EmbeddedServer(tmp_path / "db", server=db_server, test_commands=True).start()
    try:
        # Closing a client whose server was killed waits for the server up to its selection timeout.
        with pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=5000) as admin:
            db = admin["crash"]
            # The client: SIGKILLed while its transaction is open on a live server.
            replay = start_replay(proofs, out, server.uri)
            try:
                wait_for_commits(db.batches, replay, 3)
                hold_next_commit(admin, db, replay)
            finally:
                stop(replay)
            admin.admin.command("configureFailPoint", "failCommand", mode="off")
            # Its transaction stays open on the server until its lifetime (60 s) ends, which a
            # resumed run outwaits (STEPBATCH_COMMIT_WAIT_S); here an operator ends it.
            admin.admin.command("killAllSessions", [])
            committed = nothing_partial(db)

            # The server: SIGKILLed while a resumed replay's transaction is open on it.
            replay = start_replay(proofs, out, server.uri, "--resume")
            try:
                wait_for_commits(db.batches, replay, committed + 3)
                hold_next_commit(admin, db, replay)
                server.process.kill()
                server.process.wait()
            finally:
                stop(replay)
        server.close()
        server = EmbeddedServer(tmp_path / "db", server=db_server).start()
        with pymongo.MongoClient(server.uri) as client:
            committed = nothing_partial(client["crash"])
            resumed = subprocess.run(replay_command(proofs, out, "--resume"), cwd=ROOT,
                                     env=environment(server.uri, "crash"), capture_output=True, text=True,
                                     timeout=300)
            assert resumed.returncode == 0, resumed.stderr
            assert f"resumed after row {committed * BATCH_ROWS:,}" in resumed.stdout
            assert nothing_partial(client["crash"]) == BATCHES
            reference_digest, reference_verdicts = uninterrupted
            assert state_digest(client["crash"]) == reference_digest
    finally:
        server.close()
    verdicts = pq.read_table(out).drop_columns(TIMING_COLUMNS)
    assert verdicts.to_pydict() == reference_verdicts.to_pydict()
