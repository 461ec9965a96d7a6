"""The embedded SecantusDB server: starts, answers, stops cleanly, and says why when it cannot start."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pymongo
import pytest

from stepbatch.store import database, embedded
from stepbatch.store.base import StoreError
from stepbatch.store.embedded import EmbeddedServer, port_is_free

pytestmark = [pytest.mark.mongo, pytest.mark.slow]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_server_starts_answers_and_stops_cleanly(tmp_path):
    with EmbeddedServer(tmp_path / "db") as server:
        pid, port = server.pid, server.port
        with pymongo.MongoClient(server.uri) as client:
            assert client.admin.command("ping")["ok"] == 1.0
            assert database.transactions_work(client.stepbatch_probe)
        assert (tmp_path / "db" / embedded.LOG_NAME).read_text().count("listening on") == 1
    assert server.process is None
    assert not _pid_alive(pid)
    assert port_is_free(port)


def test_data_survives_a_restart(tmp_path):
    with EmbeddedServer(tmp_path / "db") as server:
        with pymongo.MongoClient(server.uri) as client:
            client.keep.things.insert_one({"_id": "kept", "n": 1})
    with EmbeddedServer(tmp_path / "db") as server:
        with pymongo.MongoClient(server.uri) as client:
            assert client.keep.things.find_one({"_id": "kept"}) == {"_id": "kept", "n": 1}


def test_second_server_on_the_same_data_dir_says_the_dir_is_locked_and_by_whom(tmp_path):
    with EmbeddedServer(tmp_path / "db") as first:
        with pytest.raises(StoreError) as caught:
            EmbeddedServer(tmp_path / "db").start()
        message = str(caught.value)
        assert "is locked by process" in message and str(first.pid) in message
        assert str((tmp_path / "db").resolve()) in message


def test_locked_dir_is_recognised_from_the_server_log_too(tmp_path, monkeypatch):
    with EmbeddedServer(tmp_path / "db"):
        # Without /proc/locks the second server is spawned, fails on WiredTiger's lock and exits.
        monkeypatch.setattr(embedded, "lock_holder", lambda path: None)
        second = EmbeddedServer(tmp_path / "db")
        with pytest.raises(StoreError, match="is locked by another process"):
            second.start()
        assert second.process is None


def test_taken_port_gives_one_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StoreError, match=rf"^port {port} on 127.0.0.1 is already in use"):
            EmbeddedServer(tmp_path / "db", port=port).start()


def test_server_that_exits_early_reports_the_end_of_its_log(tmp_path):
    data_dir = tmp_path / "db"
    data_dir.mkdir()
    (data_dir / "WiredTiger.turtle").write_text("not a WiredTiger metadata file\n")
    with pytest.raises(StoreError) as caught:
        EmbeddedServer(data_dir, start_timeout_s=120).start()
    message = str(caught.value)
    assert message.startswith("embedded SecantusDB server exited with code")
    assert "last lines of" in message and "WiredTiger" in message.split("\n", 1)[1]


def test_unusable_data_dir_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the data directory should be")
    with pytest.raises(StoreError, match="cannot use data directory"):
        EmbeddedServer(blocker / "db").start()


def test_nearly_full_disk_is_refused_before_starting(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "MIN_FREE_BYTES", 2**62)
    with pytest.raises(StoreError, match="^disk full: only"):
        EmbeddedServer(tmp_path / "db").start()


def test_db_serve_runs_in_the_foreground_until_interrupted(tmp_path):
    command = [sys.executable, "-m", "stepbatch", "db", "serve", "--data-dir", str(tmp_path / "db")]
    serve = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [serve.stdout.readline(), serve.stdout.readline()]
        uri = re.search(r"MONGODB_URI=(\S+)", lines[1]).group(1)
        server_pid = int(re.search(r"pid (\d+)", lines[0]).group(1))
        with pymongo.MongoClient(uri) as client:
            assert client.admin.command("ping")["ok"] == 1.0
        serve.send_signal(signal.SIGINT)
        out, err = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert serve.returncode == 0, err
    assert "SecantusDB stopped" in out
    assert not _pid_alive(server_pid)


def _wait_gone(pid: int, timeout_s: float = 60.0) -> bool:
    """Whether process `pid` (not our child) exits within the deadline: a pidfd becomes readable
    when it does."""
    import select
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)


_STARTER = """
import sys, time
from stepbatch.store.embedded import EmbeddedServer
server = EmbeddedServer(sys.argv[1]).start()
print(server.pid, flush=True)
if sys.argv[2] == "linger":
    time.sleep(600)
"""


def test_server_stops_when_the_interpreter_that_started_it_exits(tmp_path):
    started = subprocess.run([sys.executable, "-c", _STARTER, str(tmp_path / "db"), "exit"],
                             capture_output=True, text=True, timeout=120, check=True)
    assert _wait_gone(int(started.stdout.split()[0]))
    assert embedded.lock_holder(tmp_path / "db" / embedded.LOCK_NAME) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_server_stops_when_the_interpreter_that_started_it_is_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", _STARTER, str(tmp_path / "db"), "linger"],
                              stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        parent.kill()
        parent.wait(timeout=30)
        assert _wait_gone(server_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
