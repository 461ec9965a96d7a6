"""Which SecantusDB server the embedded database runs (SPEC §5), and how each is started.

Two servers speak the same MongoDB wire protocol over WiredTiger with the same transactions:

- `rust`: `secantusd-rs`, crate `secantus-mdb` on crates.io, pinned to `RUST_VERSION`. It is not
  in any wheel; `scripts/bootstrap` builds it with cargo into the virtualenv's `bin`. It commits a
  document in roughly half the Python server's time (benchmarks/RESULTS.md), so it is the default
  wherever it is installed.
- `python`: SecantusDB's own Python server (`python -m secantus`, PyPI `SecantusDB`, pinned in
  pyproject.toml), the fallback on a machine without a Rust toolchain.

`STEPBATCH_DB_SERVER=rust|python` chooses; unset, the Rust server runs when its pinned binary is
found. Every server command line carries every setting (an explicit, empty config file stops
SecantusDB from reading a `secantusd.toml` from the working directory, ~/.secantus or /etc).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys

from pymongo.errors import PyMongoError

from stepbatch.config import ConfigError

RUST_CRATE = "secantus-mdb"
RUST_VERSION = "0.5.3-beta.196"
RUST_BINARY = "secantusd-rs"
ENV_CHOICE = "STEPBATCH_DB_SERVER"
KINDS = ("rust", "python")


@dataclasses.dataclass(frozen=True)
class ServerKind:
    """One server: its name (`rust`/`python`), what it is called in messages, its version, and the
    program (argv prefix) that runs it."""

    name: str
    label: str
    version: str
    program: tuple[str, ...]

    @property
    def title(self) -> str:
        return f"{self.label} {self.version}"

    def command(self, *, config: pathlib.Path, host: str, port: int, data_dir: pathlib.Path,
                cache_mib: int, test_commands: bool) -> list[str]:
        # --sync-on-commit: a commit returns once WiredTiger's log is on disk. Without it both servers
        # keep committed transactions in the log buffer: SIGKILLed right after 20 acknowledged
        # transactions, the Rust server lost all 20 and the Python server 16-17 of them (5 trials
        # each). One fsync per batch's transaction costs nothing measurable at 1,000 documents.
        command = [*self.program, "--config", str(config), "--host", host, "--port", str(port),
                   "--storage-path", str(data_dir), "--log-level", "INFO", "--cache-size", f"{cache_mib}M",
                   "--sync-on-commit", "--standalone"]
        # --standalone: no replica-set advertisement (transactions work all the same), so the servers
        # refuse snapshot sessions (code 246) and a backup reads in a snapshot transaction instead:
        # the Rust server advertising a replica set accepted snapshot sessions without keeping
        # them, and 95 of 100 two-document reads beside a writer were inconsistent (0 of 100 in a
        # snapshot transaction). The Python server's --standalone also turns its oplog off.
        if test_commands:
            command.append("--enable-test-commands")
        return command

    def environment(self) -> dict[str, str]:
        """The server process's environment. No oplog on either server: nothing of stepbatch reads one
        (no change streams), and writing it cost every inserted document a second encode and write
        (Python server: a triangle insert 258 µs with it, 62 µs without)."""
        env = dict(os.environ)
        if self.name == "rust":
            env["SECANTUS_DISABLE_OPLOG"] = "1"
        return env


def rust_binary() -> pathlib.Path | None:
    """The pinned `secantusd-rs`: the virtualenv's own first (where scripts/bootstrap puts it), then
    PATH; None when neither is the pinned version."""
    candidates = [pathlib.Path(sys.executable).parent / RUST_BINARY]
    on_path = shutil.which(RUST_BINARY)
    if on_path:
        candidates.append(pathlib.Path(on_path))
    for candidate in candidates:
        if _binary_version(str(candidate)) == RUST_VERSION:
            return candidate
    return None


@functools.lru_cache(maxsize=None)
def _binary_version(path: str) -> str | None:
    """`secantusd-rs --version` → '0.5.3-beta.196'; None when it is missing or does not run."""
    if not os.access(path, os.X_OK):
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"(\d+\.\d+\.\d+\S*)", out)
    return found.group(1) if found else None


def python_server() -> ServerKind:
    try:
        version = importlib.metadata.version("SecantusDB")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return ServerKind("python", "SecantusDB Python server", version, (sys.executable, "-m", "secantus"))


def rust_server() -> ServerKind | None:
    binary = rust_binary()
    if binary is None:
        return None
    return ServerKind("rust", f"SecantusDB Rust server ({RUST_BINARY})", RUST_VERSION, (str(binary),))


def chosen(name: str | None = None) -> ServerKind:
    """The server to run: `name`, else $STEPBATCH_DB_SERVER, else Rust when installed, else Python.
    ConfigError for an unknown name, or for `rust` where the pinned binary is not installed."""
    name = name or os.environ.get(ENV_CHOICE) or None
    if name is not None and name not in KINDS:
        raise ConfigError(f"{ENV_CHOICE} is one of {', '.join(KINDS)}, got {name!r}")
    if name == "python":
        return python_server()
    rust = rust_server()
    if rust is not None:
        return rust
    if name == "rust":
        raise ConfigError(f"{ENV_CHOICE}=rust, but {RUST_BINARY} {RUST_VERSION} is not installed: run "
                          f"scripts/bootstrap on a machine with cargo, or set {ENV_CHOICE}=python")
    return python_server()


def is_python_server(client) -> bool:
    """Whether `client` talks to SecantusDB's Python server (its buildInfo names the installed
    SecantusDB package's version), whichever process started it."""
    try:
        reported = client.admin.command("buildInfo").get("secantusVersion")
    except PyMongoError:
        return False
    return reported is not None and reported == python_server().version
