"""The embedded default database of SPEC §5: a SecantusDB server in its own process.

SecantusDB speaks the MongoDB wire protocol on top of WiredTiger, with multi-document transactions.
It runs `--standalone`: it then keeps no oplog, which nothing of stepbatch reads (no change streams)
and which cost every inserted document a second encode and write (a triangle insert: 258 µs with
it, 62 µs without) and, once the oplog reached its cap, a prune; its transactions are the same.
It runs as a child process (never in ours: its accept loop and WiredTiger would share our GIL with
the Numba and signature stages) on a loopback port, keeps its data in a persistent directory and
writes its log beside the data. Every way it can fail to start becomes one `StoreError` saying why.

Its WiredTiger cache is sized as mongod sizes its own, half of (memory − 1 GiB), at least 256 MiB,
rather than SecantusDB's 1 GiB. With 1 GiB, a database of 1,000,000 committed proofs kept
WiredTiger's eviction threads busy beside the server's own (the process at 130-145% of a core where
it is at 85-93% with the larger cache) and its last batches committed 15% slower.
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

from stepbatch.store.base import StoreError

LOG_NAME = "server.log"
CONFIG_NAME = "secantusd.stepbatch.toml"
LOCK_NAME = "WiredTiger.lock"  # WiredTiger's exclusive (fcntl) lock on its home directory
MIN_FREE_BYTES = 64 * 2**20  # WiredTiger preallocates a 10 MiB log file and needs room for its tables


def default_cache_mib() -> int:
    """mongod's default WiredTiger cache: 50% of (RAM − 1 GiB), at least 256 MiB."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1024
    return max(256, int((ram - 2**30) / 2 / 2**20))


_LISTENING = re.compile(rb"secantus listening on (\S+):(\d+)")
_PR_SET_PDEATHSIG = 1


class EmbeddedServer:
    """A SecantusDB server process: `start()` (or `with`), `uri`, `close()`, `serve_forever()`.

    `data_dir` is created when missing and reopened intact across restarts; `port=0` takes a free
    loopback port (read back from the server's log, so there is no window in which another process
    can take it); `test_commands` enables `configureFailPoint` for fault-injection tests.
    """

    def __init__(self, data_dir: str | os.PathLike, port: int = 0, test_commands: bool = False,
                 host: str = "127.0.0.1", start_timeout_s: float = 60.0, cache_mib: int | None = None):
        self.data_dir = pathlib.Path(data_dir).resolve()
        self.host = host
        self.port = int(port)
        self.test_commands = test_commands
        self.start_timeout_s = start_timeout_s
        self.cache_mib = cache_mib or default_cache_mib()
        self.log_path = self.data_dir / LOG_NAME
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        if self.process is None:
            raise StoreError("the embedded server is not running")
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> "EmbeddedServer":
        """Spawn the server and return once it answers `ping`; StoreError saying why if it cannot."""
        if self.process is not None:
            return self
        self._prepare_data_dir()
        holder = lock_holder(self.data_dir / LOCK_NAME)
        if holder is not None:
            raise StoreError(self._locked_message(holder))
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [sys.executable, "-m", "secantus", "--config", str(self.data_dir / CONFIG_NAME),
                   "--host", self.host, "--port", str(self.port), "--storage-path", str(self.data_dir),
                   "--log-level", "INFO", "--standalone", "--cache-size", f"{self.cache_mib}M"]
        if self.test_commands:
            command.append("--enable-test-commands")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.data_dir, start_new_session=True, preexec_fn=_die_with_parent_preexec())
        atexit.register(self.close)
        try:
            self.port = self._wait_until_listening(log_offset)
            self._wait_until_answering()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it does not exit in time); idempotent."""
        atexit.unregister(self.close)
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def serve_forever(self) -> int:
        """Run in the foreground until the server exits or Ctrl-C / SIGTERM; the server's exit code."""
        self.start()
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
        if "already being managed by another process" in text or "WiredTiger.lock" in text:
            holder = lock_holder(self.data_dir / LOCK_NAME)
            return self._locked_message(holder)
        if "Address already in use" in text:
            return (f"port {self.port} on {self.host} is already in use; choose another port "
                    f"(or 0 for a free one)")
        if "No space left on device" in text:
            return f"disk full: the embedded server cannot write to {self.data_dir}"
        tail = "\n".join(text.strip().splitlines()[-12:])
        return f"embedded SecantusDB server {what}; last lines of {self.log_path}:\n{tail}"

    def _locked_message(self, holder: int | None) -> str:
        who = f"process {holder}" if holder is not None else "another process"
        return (f"data directory {self.data_dir} is locked by {who}: another database server is "
                f"using it; stop that server or choose another data directory")


def lock_holder(lock_path: pathlib.Path) -> int | None:
    """Pid of the process holding a POSIX lock on `lock_path` (from /proc/locks), or None."""
    try:
        stat = os.stat(lock_path)
        with open("/proc/locks") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 5454 fe:00:2196379 0 EOF"; blocked waiters carry a "->" field.
        if "->" in fields or len(fields) < 6:
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(inode) == stat.st_ino and int(major, 16) == os.major(stat.st_dev)
                    and int(minor, 16) == os.minor(stat.st_dev)):
                return int(fields[4])
        except ValueError:
            continue
    return None


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
    machine once its client had vanished, and WiredTiger's log already makes a killed server lose
    no committed transaction. The kernel ties this to the *thread* that forked, so it is set only
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
