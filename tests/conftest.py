"""Shared fixtures: the conformance vectors (tests/data/conformance) and the MongoDB-wire server."""

from __future__ import annotations

import contextlib
import json
import pathlib

import pytest

# A copy of the vectors the original TypeScript implementation and ethers.js produced (see its
# README), kept in the repository so the suite is complete on a bare clone.
CONFORMANCE_DIR = pathlib.Path(__file__).resolve().parent / "data" / "conformance"


def load_vectors(name: str):
    """The parsed `{name}.json` conformance file."""
    return json.loads((CONFORMANCE_DIR / f"{name}.json").read_text())


# ------------------------------------------------------------------------------ MongoDB fixtures
# One server for the whole session: $MONGODB_URI when set, else the embedded SecantusDB started with
# test commands (for failpoints). Every test gets a database of its own, dropped afterwards.


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory) -> str:
    import os

    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield uri
        return
    from stepbatch.store.embedded import EmbeddedServer

    with EmbeddedServer(tmp_path_factory.mktemp("mongo-session"), test_commands=True) as server:
        yield server.uri


@pytest.fixture
def mongo_db_name(mongo_uri) -> str:
    import uuid

    import pymongo

    name = f"stepbatch_test_{uuid.uuid4().hex[:12]}"
    yield name
    with pymongo.MongoClient(mongo_uri) as client:
        # A test that SIGKILLs a writer mid-commit leaves its transaction open; SecantusDB reaps such a
        # transaction only when another transaction statement arrives, and a drop waits for it.
        with contextlib.suppress(pymongo.errors.PyMongoError):
            client.admin.command("killAllSessions", [])
        client.drop_database(name)


@pytest.fixture
def mongo_store(mongo_uri, mongo_db_name):
    from stepbatch.store.mongo import MongoStore

    with MongoStore(mongo_uri, mongo_db_name) as store:
        yield store
