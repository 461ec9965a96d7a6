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
