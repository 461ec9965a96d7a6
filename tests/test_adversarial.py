"""Ways to lose or corrupt a batch that an adversarial pass found, one test each.

Each test is written from the outside, as the user or attacker who found the defect would see it:
the batch commits, every valid row keeps its verdict, the bad row gets its own, nothing is echoed
unbounded, and a command fails with one line and the right exit code.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stepbatch import MemoryStore, Validator, mesh, read_proofs
from stepbatch.cli import main
from stepbatch.config import Config
from stepbatch.schema import VERDICT_SCHEMA
from stepbatch.tools.replay import replay, run_id_of
from stepbatch.validator import BatchConflictError
from tests.strategies import _T0_MS, ACCOUNT_KEYS, point_in, signed_row

TRIANGLE = mesh.triangle_at(47.4979, 19.0402, 14)
CONFIG = Config(signature_threads=2)


def honest(i: int, key: int = 0, **changes) -> dict:
    lat, lon = point_in(TRIANGLE, (1, 1, 1))
    row = signed_row(ACCOUNT_KEYS[key], TRIANGLE, lat, lon, _T0_MS + 60_000 * i, f"nonce-{i}")
    row.update(changes)
    return row


def codes(result) -> list[str]:
    return result.verdicts.column("code").to_pylist()


# ------------------------------------------------------------------------------- losing data

@pytest.mark.mongo
def test_a_transaction_left_open_by_a_killed_writer_is_outwaited(mongo_store, caplog):
    mongo_store.add_triangles([TRIANGLE])
    orphan = mongo_store.client.start_session()
    orphan.start_transaction()
    mongo_store.db.triangles.update_one({"_id": TRIANGLE}, {"$set": {"touched": True}}, session=orphan)

    class EndOrphanOnWarning(logging.Handler):
        """Plays the server expiring the orphan once the validator says it is waiting for it."""

        def emit(self, record):
            if orphan.in_transaction:
                orphan.abort_transaction()

    handler = EndOrphanOnWarning(logging.WARNING)
    logging.getLogger("stepbatch").addHandler(handler)
    try:
        with Validator(mongo_store, CONFIG) as validator:
            result = validator.finalize([honest(0)], "after-a-crash")
    finally:
        logging.getLogger("stepbatch").removeHandler(handler)
        orphan.end_session()
    assert result.committed and codes(result) == ["ACCEPTED"]
    assert "conflicts with another writer's transaction" in caplog.text


@pytest.mark.mongo
def test_resume_never_skips_rows_of_another_file_of_the_same_name_and_size(mongo_store, tmp_path):
    mongo_store.add_triangles([TRIANGLE])
    first, second = tmp_path / "x1" / "day.ndjson", tmp_path / "x2" / "day.ndjson"
    for path, key in ((first, 0), (second, 1)):
        path.parent.mkdir()
        path.write_text("".join(json.dumps(honest(i, key)) + "\n" for i in range(2)))
    assert first.stat().st_size == second.stat().st_size and run_id_of([first]) != run_id_of([second])
    with Validator(mongo_store, CONFIG) as validator:
        replay([str(first)], validator)
        summary = replay([str(second)], validator, resume=True, out=str(tmp_path / "v.parquet"))
    assert summary.resumed_from_row == 0 and summary.counts == {"ACCEPTED": 2}
    accounts = set(pq.read_table(tmp_path / "v.parquet").column("account").to_pylist())
    assert accounts == {honest(0, 1)["account"]}


@pytest.mark.mongo
def test_a_row_the_database_could_not_store_whole_does_not_sink_its_batch(mongo_store, capsys):
    mongo_store.add_triangles([TRIANGLE])
    huge = "n" * 17_000_000
    rows = [honest(0), honest(1, nonce=huge), honest(2)]
    with Validator(mongo_store, CONFIG) as validator:
        result = validator.finalize(rows, "huge-nonce")
    assert codes(result) == ["ACCEPTED", "INVALID_PAYLOAD", "ACCEPTED"]
    stored = mongo_store.committed("huge-nonce").verdicts.column("nonce")[1].as_py()
    assert len(stored) < 300 and stored.endswith("…[cut from 17000000 characters]")
    assert mongo_store.db.accounts.find_one({"_id": rows[0]["account"]})["proofCount"] == 2


@pytest.mark.mongo
@pytest.mark.parametrize("timestamp", ["0000-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999-23:59"])
def test_a_time_bson_cannot_hold_is_refused_by_the_field_rules(mongo_store, timestamp):
    mongo_store.add_triangles([TRIANGLE])
    rows = [honest(0), honest(1, timestamp=timestamp), honest(2)]
    with Validator(mongo_store, CONFIG) as validator:
        checked = validator.validate(rows, "far-times")
        result = validator.finalize(rows, "far-times")
    assert codes(checked) == codes(result) == ["ACCEPTED", "INVALID_PAYLOAD", "ACCEPTED"]
    assert "UTC years 0001-9999" in result.verdicts.column("message")[1].as_py()


# ----------------------------------------------------------------------------- wrong answers

def test_finalizing_a_batch_id_again_at_another_batch_time_is_a_conflict():
    with Validator(MemoryStore([TRIANGLE]), CONFIG) as validator:
        first = validator.finalize([honest(0)], "bt", batch_time=_T0_MS)
        with pytest.raises(BatchConflictError, match="another batch time"):
            validator.finalize([honest(0)], "bt", batch_time=_T0_MS + 1_000_000_000)
        again = validator.finalize([honest(0)], "bt", batch_time=_T0_MS)
    assert again.digest == first.digest and codes(first) == ["ACCEPTED"]


def test_the_same_proofs_in_another_format_are_the_same_batch(tmp_path):
    rows = [honest(0), {"version": "STEP-PROOF-v1"}, honest(1)]
    ndjson = tmp_path / "same.ndjson"
    ndjson.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with Validator(MemoryStore([TRIANGLE]), CONFIG) as validator:
        first = validator.finalize(str(ndjson), "X")
        as_list = validator.finalize(rows, "X")
        as_json = validator.finalize(json.dumps(rows).encode(), "X")
    assert first.digest == as_list.digest == as_json.digest


@pytest.mark.parametrize("fmt", ["ndjson", "parquet", "records", "table"])
def test_an_input_column_named_payload_error_cannot_write_a_verdict(tmp_path, fmt):
    rows = [honest(0, payload_error="forged verdict text"), honest(1, ts_ms=0, triangle_key=-1)]
    source = {"records": rows, "table": pa.Table.from_pylist(rows)}.get(fmt)
    if fmt == "ndjson":
        source = tmp_path / "forged.ndjson"
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif fmt == "parquet":
        source = tmp_path / "forged.parquet"
        pq.write_table(pa.Table.from_pylist(rows), source)
    with Validator(MemoryStore([TRIANGLE]), CONFIG) as validator:
        result = validator.validate(source)
    assert codes(result) == ["ACCEPTED", "ACCEPTED"]


# ------------------------------------------------------------------------ crashes and messages

SURROGATE = '{"version": "STEP-PROOF-v1", "nonce": "lone\\ud800surr"}'


def deep(levels: int) -> str:
    return '{"payload":' + "[" * levels + "]" * levels + "}"


# Depth is checked before decoding: Python's decoder recurses on the C stack and crashes the process
# on a deep enough text wherever the recursion limit was raised (under pytest it is).
@pytest.mark.parametrize("bad, reason", [(deep(1000), "nested deeper than 64 levels"),
                                         (deep(100_000), "nested deeper than 64 levels"),
                                         ('{"a": "' + "[" * 100 + '"}', "missing field 'version'"),
                                         (SURROGATE, "lone surrogate")])
@pytest.mark.parametrize("framing", ["ndjson", "json"])
def test_json_python_cannot_hold_is_one_bad_row(tmp_path, bad, reason, framing):
    good = json.dumps(honest(0))
    path = tmp_path / f"input.{framing}"
    path.write_text(f"{good}\n{bad}\n{good}\n" if framing == "ndjson" else f"[{good}, {bad}, {good}]")
    errors = read_proofs(path).column("payload_error").to_pylist()
    assert errors[0] is None and errors[2] is None and re.search(reason, errors[1] or "")


def test_python_strings_with_a_lone_surrogate_are_one_bad_row():
    errors = read_proofs([honest(0), honest(1, nonce="lone\ud800")]).column("payload_error").to_pylist()
    assert errors[0] is None and "lone surrogate" in errors[1]


def test_an_empty_replay_still_writes_a_verdict_file_with_the_schema(tmp_path, capsys):
    empty, out = tmp_path / "empty.ndjson", tmp_path / "o.parquet"
    empty.write_text("")
    assert main(["replay", str(empty), "--no-commit", "--triangles", _triangles(tmp_path), "--quiet",
                 "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.column_names[:9] == VERDICT_SCHEMA.names
    assert main(["report", str(out)]) == 0


def _triangles(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "triangles.json"
    path.write_text(json.dumps([TRIANGLE]))
    return str(path)


def test_a_directory_as_input_says_so(tmp_path, capsys):
    assert main(["replay", str(tmp_path), "--no-commit", "--triangles", _triangles(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"stepbatch replay: {tmp_path}: is a directory"


def test_an_invalid_triangle_id_in_triangles_is_one_line(tmp_path, capsys):
    path = tmp_path / "triangles.json"
    path.write_text(json.dumps([TRIANGLE, "STEP-TRI-v1:D5-nope"]))
    source = tmp_path / "in.ndjson"
    source.write_text(json.dumps(honest(0)) + "\n")
    assert main(["replay", str(source), "--no-commit", "--triangles", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"stepbatch replay: --triangles {path}: entry 2 ('STEP-TRI-v1:D5-nope') is not")


@pytest.mark.parametrize("name, data, expected", [
    ("day.ndjson", gzip.compress(b'{"version": "x"}\n'), "is gzip-compressed"),
    ("day.json", b'{"version": "a"}\r{"version": "b"}\r', "lone CR"),
])
def test_compressed_or_cr_only_files_are_refused_with_one_line(tmp_path, capsys, name, data, expected):
    path = tmp_path / name
    path.write_bytes(data)
    assert main(["replay", str(path), "--no-commit", "--triangles", _triangles(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert expected in line


def test_a_float32_coordinate_column_is_a_clear_invalid_payload():
    table = pa.Table.from_pylist([honest(0)])
    table = table.set_column(table.column_names.index("lat"), "lat", table.column("lat").cast(pa.float32()))
    (error,) = read_proofs(table).column("payload_error").to_pylist()
    assert error.startswith("row 1: lat: expected a float64 column (float32 keeps too few digits to match "
                            "what was signed), got number 47.49")


@pytest.mark.slow
def test_db_serve_whose_server_was_killed_says_so_on_stderr(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "stepbatch", "db", "serve", "--data-dir",
                                str(tmp_path / "db")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        first = process.stdout.readline()
        server_pid = int(first.split("(pid ")[1].split(",")[0])
        os.kill(server_pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1 and "stopped" not in stdout
    (line,) = stderr.strip().splitlines()
    from stepbatch.store import servers
    assert line.startswith(f"stepbatch db serve: {servers.chosen().title} killed by signal 9; its log: ")


@pytest.mark.mongo
def test_a_100k_row_batch_commits_in_commands_the_server_finishes_quickly(mongo_uri, mongo_db_name):
    """What the embedded server is sent for one large batch: no command carries more than a chunk of
    documents, so a client that dies mid-commit leaves it about a second of work, not minutes."""
    from pymongo import monitoring

    from stepbatch.store.mongo import UPDATE_CHUNK, WRITE_CHUNK, MongoStore
    from stepbatch.tools import gen

    class Sizes(monitoring.CommandListener):
        largest = {"insert": 0, "update": 0}

        def started(self, event):
            if event.command_name in self.largest:
                field = "documents" if event.command_name == "insert" else "updates"
                self.largest[event.command_name] = max(self.largest[event.command_name],
                                                       len(event.command.get(field, ())))

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass

    traffic = gen.generate(walkers=2_000, proofs=100_000, seed=3)
    sizes = Sizes()
    with MongoStore(mongo_uri, mongo_db_name, config=CONFIG, client_options={"event_listeners": [sizes]}) as store:
        store.add_triangles(traffic.triangles)
        with Validator(store, CONFIG) as validator:
            validator.finalize(traffic.proofs.slice(0, 20_000), "warm-up")
            result = validator.finalize(traffic.proofs.slice(20_000), "large")
        assert result.committed and result.verdicts.num_rows == 80_000
        assert store.accepted_count() == sum(validator.store.committed(b).counts.get("ACCEPTED", 0)
                                             for b in ("warm-up", "large"))
    assert WRITE_CHUNK // 2 < sizes.largest["insert"] <= WRITE_CHUNK
    assert 0 < sizes.largest["update"] <= UPDATE_CHUNK
