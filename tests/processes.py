"""Running stepbatch's own servers as real processes in tests, and always stopping them."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


class ServerProcess:
    """`python -m stepbatch ARGS` in the background; `url` is read from its "listening on" line."""

    def __init__(self, args: list[str], env: dict | None = None, ready_pattern: str = r"listening on (\S+)",
                 timeout_s: float = 120.0):
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stepbatch", *map(str, args)], cwd=ROOT, env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._ready = threading.Event()
        self.url: str | None = None
        self._pattern = re.compile(ready_pattern)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout_s) or self.url is None:
            self.stop()
            raise RuntimeError(f"stepbatch {' '.join(map(str, args))} did not start:\n" + "".join(self.lines[-40:]))

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            match = self._pattern.search(line)
            if match and self.url is None:
                self.url = match[1]
                self._ready.set()
        self._ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout_s: float = 60.0) -> int:
        return self.process.wait(timeout_s)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def server_process(args: list[str], env: dict | None = None, **options):
    server = ServerProcess(args, env, **options)
    try:
        yield server
    finally:
        server.stop()


def wait_until(predicate, timeout_s: float = 30.0, every_s: float = 0.05, what: str = "a condition"):
    """Poll `predicate` until it returns something true; its value. TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)
