"""Shared fixtures: the conformance vectors (tests/data/conformance) and the MongoDB-wire server."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib

import pytest

# A copy of the vectors the original TypeScript implementation and ethers.js produced (see its
# README), kept in the repository so the suite is complete on a bare clone.
CONFORMANCE_DIR = pathlib.Path(__file__).resolve().parent / "data" / "conformance"


def load_vectors(name: str):
    """The parsed `{name}.json` conformance file."""
    return json.loads((CONFORMANCE_DIR / f"{name}.json").read_text())


# ------------------------------------------------------------------------------ MongoDB fixtures
# $MONGODB_URI when set, else the embedded SecantusDB server of `stepbatch.store.servers.chosen()`
# (Rust where scripts/bootstrap built it), started once for the session with test commands (for
# failpoints). A test marked `both_servers` runs once on each embedded server that is installed (the
# Python server as a subset of the suite, beside the default). Every test gets a database of its own,
# dropped afterwards.


def pytest_configure(config):
    config.addinivalue_line("markers", "both_servers: runs on each installed embedded server "
                                       "(Rust and Python), or once on MONGODB_URI")


def installed_servers() -> list[str]:
    from stepbatch.store import servers

    return [name for name in servers.KINDS if name != "rust" or servers.rust_server() is not None]


def pytest_generate_tests(metafunc):
    if (metafunc.definition.get_closest_marker("both_servers") and "db_server" in metafunc.fixturenames
            and not os.environ.get("MONGODB_URI")):
        metafunc.parametrize("db_server", installed_servers(), indirect=True, scope="session")


@pytest.fixture(scope="session")
def embedded_servers(tmp_path_factory):
    """kind → its session server, started when first asked for."""
    from stepbatch.store.embedded import EmbeddedServer

    started = {}

    def server(kind: str) -> EmbeddedServer:
        if kind not in started:
            started[kind] = EmbeddedServer(tmp_path_factory.mktemp(f"mongo-{kind}"), test_commands=True,
                                           server=kind).start()
        return started[kind]

    try:
        yield server
    finally:
        for running in started.values():
            running.close()


@pytest.fixture(scope="session")
def db_server(request) -> str:
    """The embedded server a test runs on (its parametrisation, else the default), or 'uri'."""
    from stepbatch.store import servers

    if os.environ.get("MONGODB_URI"):
        return "uri"
    name = getattr(request, "param", None)
    if name == "rust" and servers.rust_server() is None:
        pytest.skip("secantusd-rs is not installed (scripts/bootstrap builds it where cargo is)")
    return name or servers.chosen().name


@pytest.fixture(scope="session")
def mongo_uri(db_server, embedded_servers) -> str:
    if db_server == "uri":
        return os.environ["MONGODB_URI"]
    return embedded_servers(db_server).uri


@pytest.fixture
def mongo_db_name(mongo_uri) -> str:
    import uuid

    import pymongo

    name = f"stepbatch_test_{uuid.uuid4().hex[:12]}"
    yield name
    with pymongo.MongoClient(mongo_uri) as client:
        # A test that SIGKILLs a writer mid-commit leaves its transaction open; both SecantusDB servers
        # keep it until its 60 s lifetime ends (as mongod does), and a drop waits for it.
        with contextlib.suppress(pymongo.errors.PyMongoError):
            client.admin.command("killAllSessions", [])
        client.drop_database(name)


@pytest.fixture
def mongo_store(mongo_uri, mongo_db_name):
    from stepbatch.store.mongo import MongoStore

    with MongoStore(mongo_uri, mongo_db_name) as store:
        yield store
