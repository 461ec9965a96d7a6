"""The embedded SecantusDB server: starts, answers, stops cleanly, is shared by the commands that use its
data directory, says why when it cannot start, and which server (Rust or Python) and version it is."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pymongo
import pytest

from stepbatch.config import ConfigError
from stepbatch.store import database, datadir, embedded, servers
from stepbatch.store.base import StoreError
from stepbatch.store.embedded import EmbeddedServer, port_is_free
from tests.conftest import installed_servers

pytestmark = [pytest.mark.mongo, pytest.mark.slow]


@pytest.fixture(params=installed_servers())
def kind(request) -> str:
    return request.param


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_server_starts_answers_and_stops_cleanly(tmp_path, kind):
    with EmbeddedServer(tmp_path / "db", server=kind) as server:
        pid, port = server.pid, server.port
        assert server.kind.name == kind
        with pymongo.MongoClient(server.uri) as client:
            assert client.admin.command("ping")["ok"] == 1.0
            assert database.transactions_work(client.stepbatch_probe)
        assert (tmp_path / "db" / embedded.LOG_NAME).read_text().count("listening on") == 1
        assert datadir.read_record(tmp_path / "db")["port"] == port
    assert server.process is None
    assert not _pid_alive(pid)
    assert port_is_free(port)
    assert datadir.read_record(tmp_path / "db") is None


def test_data_survives_a_restart(tmp_path):
    with EmbeddedServer(tmp_path / "db") as server:
        with pymongo.MongoClient(server.uri) as client:
            client.keep.things.insert_one({"_id": "kept", "n": 1})
    with EmbeddedServer(tmp_path / "db") as server:
        with pymongo.MongoClient(server.uri) as client:
            assert client.keep.things.find_one({"_id": "kept"}) == {"_id": "kept", "n": 1}


def test_a_second_command_on_a_served_data_dir_connects_to_its_server_and_leaves_it_running(tmp_path):
    with EmbeddedServer(tmp_path / "db") as first:
        with EmbeddedServer(tmp_path / "db") as second:
            assert second.shared is not None and second.process is None
            assert (second.pid, second.uri) == (first.pid, first.uri)
            assert second.description == first.description
            with pymongo.MongoClient(second.uri) as client:
                client.shared.things.insert_one({"_id": 1})
        with pymongo.MongoClient(first.uri) as client:
            assert client.shared.things.count_documents({}) == 1


def test_db_serve_on_a_served_data_dir_names_the_server_and_its_uri(tmp_path):
    with EmbeddedServer(tmp_path / "db") as first:
        with pytest.raises(StoreError) as caught:
            EmbeddedServer(tmp_path / "db", attach=False).start()
        assert str(caught.value) == (
            f"data directory {first.data_dir} is already served by process {first.pid} "
            f"({first.description}) at {first.uri}; use that MONGODB_URI, or stop it first")


_LOCK_HOLDER = """
import fcntl, sys
lock = open(sys.argv[1], "w")
fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_lock_held_by_something_that_is_not_a_server_is_stale_and_says_how_to_clear_it(tmp_path):
    data_dir = tmp_path / "db"
    data_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(data_dir / datadir.LOCK_NAME)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(StoreError) as caught:
            EmbeddedServer(data_dir).start()
    finally:
        holder.kill()
        holder.wait()
    assert str(caught.value) == (
        f"data directory {data_dir.resolve()} is locked by process {holder.pid}, which is not a server "
        f"stepbatch started: a stale lock; if no database server should be running there, clear it "
        f"with `kill {holder.pid}` and run the command again, or choose another data directory")


def test_a_server_that_stopped_answering_is_a_stale_lock(tmp_path):
    with EmbeddedServer(tmp_path / "db") as hung:
        pid, uri = hung.pid, hung.uri
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreError) as caught:
                EmbeddedServer(tmp_path / "db").start()
        finally:
            hung.process.kill()
    assert str(caught.value).startswith(
        f"data directory {hung.data_dir} is locked by process {pid}, which does not answer at {uri}: "
        f"a stale lock; ")
    assert f"`kill {pid}`" in str(caught.value)


def test_a_killed_server_leaves_a_record_that_the_next_start_replaces(tmp_path):
    with EmbeddedServer(tmp_path / "db") as server:
        with pymongo.MongoClient(server.uri) as client:
            client.keep.things.insert_one({"_id": "kept"})
        killed = server.pid
        server.process.kill()
        server.process.wait()
        assert datadir.read_record(tmp_path / "db")["pid"] == killed
        with EmbeddedServer(tmp_path / "db") as again:
            assert again.process is not None and again.pid != killed
            assert datadir.read_record(tmp_path / "db")["pid"] == again.pid
            with pymongo.MongoClient(again.uri) as client:
                assert client.keep.things.count_documents({}) == 1


def test_a_lock_taken_by_a_server_started_at_the_same_moment_is_shared(tmp_path, monkeypatch):
    with EmbeddedServer(tmp_path / "db") as first:
        # As if the second command looked before the first server took the lock: it spawns its own,
        # which fails on WiredTiger's lock, and then finds the first one.
        real, looked = datadir.find_server, []

        def first_look_misses(data_dir, start_timeout_s):
            if not looked:
                looked.append(data_dir)
                return None
            return real(data_dir, start_timeout_s)

        monkeypatch.setattr(datadir, "find_server", first_look_misses)
        with EmbeddedServer(tmp_path / "db") as second:
            assert second.shared is not None and second.pid == first.pid


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
    assert message.startswith(f"embedded {servers.chosen().title} exited with code")
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


def test_the_server_is_chosen_by_its_variable_and_an_unknown_choice_is_refused(monkeypatch):
    monkeypatch.setenv(servers.ENV_CHOICE, "python")
    assert servers.chosen().name == "python"
    monkeypatch.setenv(servers.ENV_CHOICE, "mongod")
    with pytest.raises(ConfigError, match=r"^STEPBATCH_DB_SERVER is one of rust, python, got 'mongod'$"):
        servers.chosen()
    monkeypatch.setenv(servers.ENV_CHOICE, "rust")
    monkeypatch.setattr(servers, "rust_server", lambda: None)
    with pytest.raises(ConfigError, match=r"^STEPBATCH_DB_SERVER=rust, but secantusd-rs 0.5.3-beta.196 is not "
                                          r"installed: run scripts/bootstrap on a machine with cargo"):
        servers.chosen()
    monkeypatch.delenv(servers.ENV_CHOICE)
    assert servers.chosen().name == "python"


def test_db_serve_runs_in_the_foreground_until_interrupted_and_says_which_server(tmp_path, kind):
    command = [sys.executable, "-m", "stepbatch", "db", "serve", "--data-dir", str(tmp_path / "db")]
    serve = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, servers.ENV_CHOICE: kind})
    try:
        lines = [serve.stdout.readline(), serve.stdout.readline()]
        title = servers.chosen(kind).title
        assert lines[0].startswith(f"{title} serving {(tmp_path / 'db').resolve()} (pid ")
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
    assert f"{title} stopped" in out
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
