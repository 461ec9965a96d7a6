"""One embedded server per data directory, shared by every stepbatch command that uses it.

WiredTiger holds an exclusive POSIX lock on `WiredTiger.lock` in its home directory while a server
has it open, and the kernel drops that lock when the process ends, however it ends. Beside the lock
the process that started the server records, once the server listens, who serves the directory and
where (`ADDRESS_NAME`: pid, server, version, host, port). A command that finds the lock held reads
that record and connects to the server it names (`find_server`), so `stepbatch serve` in one
terminal and `stepbatch mesh seed` in another share one server; a SecantusDB server that holds the
lock and has no record yet is starting, and is waited for. A lock held by any other process, or by a
server that does not answer, is stale: the error names the process and says how to clear it. A
record without a lock (its server was killed) is simply replaced.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import pymongo
from pymongo.errors import PyMongoError

from stepbatch.store.base import StoreError

LOCK_NAME = "WiredTiger.lock"
ADDRESS_NAME = "stepbatch-server.json"
# How long a lock held by a process that is not a SecantusDB server is watched before it is called
# stale (a server's process is a Python interpreter until it has imported SecantusDB).
RECORD_GRACE_S = 2.0
_SERVER_COMMANDS = (b"secantusd-rs", b"-m\x00secantus\x00")


@dataclasses.dataclass(frozen=True)
class ServedBy:
    """A live server of a data directory: its process, which server, and its address."""

    pid: int
    server: str
    version: str
    host: str
    port: int

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"


def write_record(data_dir: pathlib.Path, pid: int, server: str, version: str, host: str, port: int) -> None:
    """Record the server of `data_dir`, replacing any earlier record atomically."""
    path = data_dir / ADDRESS_NAME
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"pid": pid, "server": server, "version": version, "host": host,
                                   "port": port}) + "\n")
    os.replace(partial, path)


def remove_record(data_dir: pathlib.Path, pid: int) -> None:
    """Remove the record if it still names `pid` (a newer server may have replaced it)."""
    record = read_record(data_dir)
    if record is not None and record.get("pid") == pid:
        (data_dir / ADDRESS_NAME).unlink(missing_ok=True)


def read_record(data_dir: pathlib.Path) -> dict | None:
    try:
        record = json.loads((data_dir / ADDRESS_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def find_server(data_dir: pathlib.Path, start_timeout_s: float) -> ServedBy | None:
    """The live server of `data_dir`, None when no process holds its lock; StoreError for a stale lock.

    A server that holds the lock without a record yet is starting: waited for up to `start_timeout_s`.
    """
    lock = data_dir / LOCK_NAME
    deadline = time.monotonic() + start_timeout_s
    grace = time.monotonic() + RECORD_GRACE_S
    while True:
        holder = lock_holder(lock)
        if holder is None:
            return None
        record = read_record(data_dir)
        if record is not None and record.get("pid") == holder and record.get("port"):
            served = ServedBy(holder, str(record.get("server")), str(record.get("version")),
                              str(record.get("host")), int(record["port"]))
            if _answers(served.uri):
                return served
            raise StoreError(stale_message(data_dir, holder, f"does not answer at {served.uri}"))
        starting = _is_server(holder)
        if time.monotonic() > (deadline if starting else grace):
            raise StoreError(stale_message(data_dir, holder, "is not a server stepbatch started" if not starting
                                           else f"did not start listening within {start_timeout_s:.0f} s"))
        time.sleep(0.05)


def stale_message(data_dir: pathlib.Path, holder: int | None, why: str) -> str:
    who = f"process {holder}" if holder is not None else "another process"
    clear = f"`kill {holder}`" if holder is not None else "stopping the process that holds it"
    return (f"data directory {data_dir} is locked by {who}, which {why}: a stale lock; if no database "
            f"server should be running there, clear it with {clear} and run the command again, or "
            f"choose another data directory")


def _is_server(pid: int) -> bool:
    """Whether process `pid` runs a SecantusDB server (from its command line)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read() + b"\x00"
    except OSError:
        return False
    return any(marker in command for marker in _SERVER_COMMANDS)


def _answers(uri: str) -> bool:
    try:
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000) as client:
            client.admin.command("ping")
        return True
    except PyMongoError:
        return False


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
