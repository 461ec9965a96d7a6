"""The embedded default database of SPEC §5: a SecantusDB server in its own process.

SecantusDB speaks the MongoDB wire protocol on top of WiredTiger, with multi-document transactions;
which of its servers runs (the Rust one where it is installed, else the Python one) is
`stepbatch.store.servers`' choice. It runs as a child process (never in ours: its accept loop and
WiredTiger would share our GIL with the Numba and signature stages) on a loopback port, keeps its
data in a persistent directory and writes its log beside the data. One server serves a data
directory: a second command on the same directory connects to it (`stepbatch.store.datadir`).
Every way it can fail to start becomes one `StoreError` saying why.

Its WiredTiger cache is sized as mongod sizes its own, half of (memory − 1 GiB), at least 256 MiB,
rather than SecantusDB's 1 GiB. With 1 GiB, a database of 1,000,000 committed proofs kept the Python
server's WiredTiger eviction threads busy beside the server's own (the process at 130-145% of a core
where it is at 85-93% with the larger cache) and its last batches committed 15% slower.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pymongo
from pymongo.errors import PyMongoError

from stepbatch.store import datadir, servers
from stepbatch.store.base import StoreError
from stepbatch.store.datadir import LOCK_NAME, lock_holder  # noqa: F401  (re-exported)

LOG_NAME = "server.log"
CONFIG_NAME = "secantusd.stepbatch.toml"
MIN_FREE_BYTES = 64 * 2**20  # WiredTiger preallocates a 10 MiB log file and needs room for its tables


def default_cache_mib() -> int:
    """mongod's default WiredTiger cache: 50% of (RAM − 1 GiB), at least 256 MiB."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1024
    return max(256, int((ram - 2**30) / 2 / 2**20))


# "secantus listening on 127.0.0.1:41234" (Python server), "secantusd-rs listening on …" (Rust).
_LISTENING = re.compile(rb"secantus(?:d-rs)? listening on (\S+):(\d+)")
_PR_SET_PDEATHSIG = 1


class EmbeddedServer:
    """A SecantusDB server process: `start()` (or `with`), `uri`, `close()`, `serve_forever()`.

    `data_dir` is created when missing and reopened intact across restarts. When a live server
    already serves it, `start()` connects to that one (`shared` is then true, and `close()` leaves it
    running) unless `attach=False`, which makes that an error. `port=0` takes a free loopback port
    (read back from the server's output, so there is no window in which another process can take it);
    `test_commands` enables `configureFailPoint` for fault-injection tests; `server` is `rust`,
    `python` or None for `stepbatch.store.servers.chosen()`.
    """

    def __init__(self, data_dir: str | os.PathLike, port: int = 0, test_commands: bool = False,
                 host: str = "127.0.0.1", start_timeout_s: float = 60.0, cache_mib: int | None = None,
                 server: str | None = None, attach: bool = True):
        self.data_dir = pathlib.Path(data_dir).resolve()
        self.host = host
        self.port = int(port)
        self.test_commands = test_commands
        self.start_timeout_s = start_timeout_s
        self.cache_mib = cache_mib or default_cache_mib()
        self.kind = servers.chosen(server)
        self.attach = attach
        self.log_path = self.data_dir / LOG_NAME
        self.process: subprocess.Popen | None = None
        self.shared: datadir.ServedBy | None = None

    @property
    def uri(self) -> str:
        if self.shared is not None:
            return self.shared.uri
        if self.process is None:
            raise StoreError("the embedded server is not running")
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    @property
    def pid(self) -> int | None:
        if self.shared is not None:
            return self.shared.pid
        return self.process.pid if self.process is not None else None

    @property
    def description(self) -> str:
        """Which server runs and its version, e.g. 'SecantusDB Rust server (secantusd-rs) 0.5.3-beta.196'."""
        if self.shared is not None:
            return f"{self.shared.server} {self.shared.version}"
        return self.kind.title

    def start(self) -> "EmbeddedServer":
        """Spawn the server (or connect to the one serving the data directory) and return once it
        answers `ping`; StoreError saying why if it cannot."""
        if self.process is not None or self.shared is not None:
            return self
        self._prepare_data_dir()
        if self._found_running():
            return self
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = self.kind.command(config=self.data_dir / CONFIG_NAME, host=self.host, port=self.port,
                                    data_dir=self.data_dir, cache_mib=self.cache_mib,
                                    test_commands=self.test_commands)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.data_dir, env=self.kind.environment(), start_new_session=True,
                preexec_fn=_die_with_parent_preexec())
        atexit.register(self.close)
        try:
            self.port = self._wait_until_listening(log_offset)
            self._wait_until_answering()
            datadir.write_record(self.data_dir, self.process.pid, self.kind.label, self.kind.version,
                                 self.host, self.port)
        except StoreError as err:
            self.close()
            # Two commands that started at once: the other one's server took the lock first.
            if "is locked by" in str(err) and self._found_running():
                return self
            raise
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the server we started (SIGTERM, then SIGKILL if it does not exit in time), or let go
        of a shared one; idempotent."""
        atexit.unregister(self.close)
        self.shared = None
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        datadir.remove_record(self.data_dir, process.pid)

    def serve_forever(self) -> int:
        """Run in the foreground until the server exits or Ctrl-C / SIGTERM; the server's exit code."""
        self.start()
        if self.process is None:
            raise StoreError(f"data directory {self.data_dir} is already served by process {self.pid} "
                             f"({self.description}) at {self.uri}")
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) \
            if threading.current_thread() is threading.main_thread() else None
        try:
            return self.process.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            self.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- start-up

    def _found_running(self) -> bool:
        """Whether a live server serves the data directory (then we share it, if we may)."""
        served = datadir.find_server(self.data_dir, self.start_timeout_s)
        if served is None:
            return False
        if not self.attach:
            raise StoreError(f"data directory {self.data_dir} is already served by process {served.pid} "
                             f"({served.server} {served.version}) at {served.uri}; use that "
                             f"MONGODB_URI, or stop it first")
        if self.port and served.port != self.port:
            raise StoreError(f"data directory {self.data_dir} is already served by process {served.pid} "
                             f"on port {served.port}, not {self.port}; use MONGODB_URI={served.uri}")
        self.shared = served
        return True

    def _prepare_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # An explicit (empty) config file stops SecantusDB from picking up a secantusd.toml found
            # in the working directory, ~/.secantus or /etc: every setting comes from our command line.
            config = self.data_dir / CONFIG_NAME
            if not config.exists():
                config.write_text("# written by stepbatch: the embedded server's settings are its "
                                  "command-line flags\n")
        except OSError as err:
            raise StoreError(f"cannot use data directory {self.data_dir}: {err.strerror}") from err
        free = shutil.disk_usage(self.data_dir).free
        if free < MIN_FREE_BYTES:
            raise StoreError(f"disk full: only {free // 2**20} MiB free for data directory {self.data_dir} "
                             f"(the embedded server needs at least {MIN_FREE_BYTES // 2**20} MiB)")

    def _wait_until_listening(self, log_offset: int) -> int:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            found = _LISTENING.search(self._log_since(log_offset))
            if found:
                return int(found.group(2))
            try:
                self.process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise StoreError(self._failure_message(
                        log_offset, f"did not start listening within {self.start_timeout_s:.0f} s"))
                continue
            raise StoreError(self._failure_message(
                log_offset, f"exited with code {self.process.returncode} while starting"))

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        with pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000) as client:
            while True:
                try:
                    client.admin.command("ping")
                    return
                except PyMongoError as err:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise StoreError(f"embedded server on port {self.port} does not answer ping: "
                                         f"{err}; see {self.log_path}") from err

    def _log_since(self, offset: int) -> bytes:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read()
        except OSError:
            return b""

    def _failure_message(self, log_offset: int, what: str) -> str:
        """One line for the most likely cause, then the last lines of the server's log."""
        text = self._log_since(log_offset).decode("utf-8", "replace")
        if _LOCKED.search(text):
            holder = lock_holder(self.data_dir / LOCK_NAME)
            who = f"process {holder}" if holder is not None else "another process"
            return f"data directory {self.data_dir} is locked by {who}: another database server is using it"
        if "Address already in use" in text or "address in use" in text.lower():
            return (f"port {self.port} on {self.host} is already in use; choose another port "
                    f"(or 0 for a free one)")
        if "No space left on device" in text:
            return f"disk full: the embedded server cannot write to {self.data_dir}"
        tail = "\n".join(text.strip().splitlines()[-12:])
        return f"embedded {self.kind.title} {what}; last lines of {self.log_path}:\n{tail}"


# WiredTiger's words when another process holds its home directory.
_LOCKED = re.compile(r"already being managed by another process|WiredTiger\.lock|Resource temporarily unavailable")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `host:port` right now (with SO_REUSEADDR, as servers bind, so
    connections of a stopped server lingering in TIME_WAIT do not count)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _die_with_parent_preexec():
    """On Linux, make the server die with us if we die without running atexit (SIGKILL, crash).

    The signal is SIGKILL: SecantusDB's graceful SIGTERM shutdown was seen to hang on a loaded
    machine once its client had vanished, and with --sync-on-commit (see `stepbatch.store.servers`)
    a killed server loses no committed transaction. The kernel ties this to the *thread* that forked, so it is set only
    when starting from the main thread: a server started from a worker thread would otherwise stop
    when that thread ends.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl

    def set_parent_death_signal():
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return set_parent_death_signal
