"""Backups of a stepbatch database that restore (SPEC §11): `stepbatch db backup DIR` / `db restore DIR`.

A backup is a point-in-time copy taken while writers run. Every collection is read in one snapshot:
a snapshot session where the server has them (a MongoDB replica set, 5.0 on), else one read-only
transaction with read concern "snapshot" (SecantusDB, which runs them standalone). Either way every
document read is as of one commit sequence number, the one `meta.commitSeq` holds in that snapshot,
and no writer waits for the backup: WiredTiger serves a snapshot beside the writes that follow it.

The directory is what mongodump writes, one `{collection}.bson` (the documents' BSON, one after
another, exactly as the server sent them) and one `{collection}.metadata.json` (options and
indexes) per collection, so `mongorestore` can read it too, and `manifest.json`, written last: the
sequence number, counts, sizes and SHA-256 of every file, and the `state_digest` of the copy, which
`restore` checks after rebuilding. A directory without a manifest is not a backup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import pathlib
import time

import bson
from bson import json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import IndexModel
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern

from stepbatch.store import database
from stepbatch.store.base import StoreError, brief
from stepbatch.store.statedigest import state_digest

FORMAT = "stepbatch-backup-v1"
MANIFEST = "manifest.json"
INSERT_BYTES = 8 * 2**20  # BSON per insert_many on restore: well under the 48 MB message limit
_RAW = CodecOptions(document_class=RawBSONDocument)
_DECODED = CodecOptions(tz_aware=True)
# SnapshotUnavailable (a standalone server), InvalidOptions, and the codes of servers that do not
# know the snapshot option at all.
_NO_SNAPSHOT_SESSIONS = frozenset({246, 72, 9, 2})


class BackupError(StoreError):
    """A backup cannot be taken or restored as asked; the message says why."""


@dataclasses.dataclass(frozen=True)
class BackupReport:
    directory: pathlib.Path
    database: str
    seq: int
    counts: dict[str, int]
    bytes: int
    state_digest: str
    seconds: float


def backup(db, directory: str | os.PathLike) -> BackupReport:
    """Copy every collection of `db` (a pymongo Database) into `directory` (new or empty), as of one
    commit sequence number; the manifest is written last."""
    started = time.perf_counter()
    target = pathlib.Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target} is not an empty directory: a backup goes into a new one")
    target.mkdir(parents=True, exist_ok=True)
    try:
        names = sorted(n for n in db.list_collection_names() if not n.startswith("system."))
        metadata = {name: _metadata(db[name]) for name in names}
    except PyMongoError as err:
        raise BackupError(f"cannot list the collections of {db.name}: {brief(err)}") from err
    collections: dict[str, dict] = {}
    try:
        with _snapshot(db) as session:
            seq = database.read_seq(db, session=session)
            read_in = "snapshot session" if session.options.snapshot else "snapshot transaction"
            for name in names:
                collections[name] = _dump(db[name], target, session)
            digest = state_digest(_SessionBound(db.with_options(codec_options=_DECODED), session))
    except PyMongoError as err:
        raise BackupError(f"backup of {db.name} failed while reading it: {brief(err)}") from err
    for name, meta in metadata.items():
        (target / f"{name}.metadata.json").write_text(json_util.dumps(meta, indent=1) + "\n")
        collections[name]["indexes"] = len(meta["indexes"])
    manifest = {
        "format": FORMAT, "database": db.name, "seq": seq, "stateDigest": digest, "readIn": read_in,
        "takenAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "layoutVersion": (db.meta.find_one({"_id": database.LAYOUT_ID}) or {}).get("version"),
        "collections": collections,
    }
    _write_durably(target / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return BackupReport(target, db.name, seq, {n: c["documents"] for n, c in collections.items()},
                        sum(c["bytes"] for c in collections.values()), digest, time.perf_counter() - started)


def read_manifest(directory: str | os.PathLike) -> dict:
    path = pathlib.Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{directory} holds no {MANIFEST}: not a backup, or one that did not finish") from None
    except (OSError, ValueError) as err:
        raise BackupError(f"{path} cannot be read: {err}") from err
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path} is of format {manifest.get('format')!r}, this stepbatch reads {FORMAT}")
    return manifest


def is_empty(db) -> bool:
    """Whether `db` holds no document in any collection (what `restore` writes into without --force)."""
    return all(db[name].find_one({}, {"_id": 1}) is None
               for name in db.list_collection_names() if not name.startswith("system."))


def restore(db, directory: str | os.PathLike, force: bool = False) -> BackupReport:
    """Rebuild `db` from a backup: the files are checked against the manifest first, then every
    collection is inserted and its indexes built, and the result's `state_digest` must be the
    manifest's. A database that holds any document is refused unless `force`, which drops it."""
    started = time.perf_counter()
    source = pathlib.Path(directory)
    manifest = read_manifest(source)
    for name, entry in manifest["collections"].items():
        _check_file(source / entry["file"], entry)
    try:
        if not is_empty(db):
            if not force:
                raise BackupError(f"database {db.name} is not empty: restore it with --force to replace "
                                  f"what it holds, or restore into another database (--db)")
            db.client.drop_database(db.name)
        # meta last: a restore that stops half way leaves no commit sequence, and no layout version
        # that would let a validator take the half-copied state for a whole one.
        names = sorted(manifest["collections"], key=lambda n: (n == "meta", n))
        for name in names:
            _load(db, name, source, manifest["collections"][name])
    except PyMongoError as err:
        raise BackupError(f"restore into {db.name} failed: {brief(err)}; the database is partly "
                          f"written, run the restore again with --force") from err
    digest = state_digest(db.with_options(codec_options=_DECODED))
    if digest != manifest["stateDigest"]:
        raise BackupError(f"restored database {db.name} has state digest {digest}, the backup says "
                          f"{manifest['stateDigest']}: the copy is not the state it was taken of")
    counts = {name: entry["documents"] for name, entry in manifest["collections"].items()}
    total = sum(entry["bytes"] for entry in manifest["collections"].values())
    return BackupReport(source, db.name, manifest["seq"], counts, total, digest, time.perf_counter() - started)


# ------------------------------------------------------------------------------- reading

@contextlib.contextmanager
def _snapshot(db):
    """A session whose every read sees one snapshot of the database."""
    client = db.client
    session = client.start_session(snapshot=True)
    try:
        db.meta.find_one({"_id": database.SEQ_ID}, session=session)
    except OperationFailure as err:
        session.end_session()
        if err.code not in _NO_SNAPSHOT_SESSIONS:
            raise
        session = None
    if session is not None:
        with session:
            yield session
        return
    # No snapshot sessions (a standalone server, or MongoDB before 5.0): one read-only transaction.
    # On MongoDB such a transaction is bounded by transactionLifetimeLimitSeconds (60 s by default).
    with client.start_session() as session, session.start_transaction(read_concern=ReadConcern("snapshot")):
        yield session


def _dump(collection, target: pathlib.Path, session) -> dict:
    """The collection's documents as the server sent them, into `{name}.bson`."""
    path = target / f"{collection.name}.bson"
    sha, size, count = hashlib.sha256(), 0, 0
    with open(path, "wb") as out:
        for batch in collection.find_raw_batches({}, session=session):
            out.write(batch)
            sha.update(batch)
            size += len(batch)
            count += _count_documents(batch)
        out.flush()
        os.fsync(out.fileno())
    return {"file": path.name, "documents": count, "bytes": size, "sha256": sha.hexdigest()}


def _count_documents(raw: bytes) -> int:
    count, offset = 0, 0
    while offset < len(raw):
        offset += int.from_bytes(raw[offset:offset + 4], "little")
        count += 1
    return count


def _metadata(collection) -> dict:
    """mongodump's metadata of a collection: its options and its index specifications."""
    options = collection.options()
    indexes = [dict(spec) for spec in collection.list_indexes()]
    for spec in indexes:
        spec.pop("ns", None)
    return {"options": options, "indexes": indexes, "collectionName": collection.name}


class _SessionBound:
    """A view of a pymongo Database whose collections read in `session`, for functions that take a
    database and know nothing of sessions (`state_digest`)."""

    def __init__(self, db, session):
        self._db, self._session = db, session
        self.name, self.client = db.name, db.client

    def __getitem__(self, name: str) -> "_SessionBoundCollection":
        return _SessionBoundCollection(self._db[name], self._session)

    def __getattr__(self, name: str) -> "_SessionBoundCollection":
        return self[name]


class _SessionBoundCollection:
    _READS = frozenset({"find", "find_one", "count_documents", "aggregate", "distinct", "find_raw_batches"})

    def __init__(self, collection, session):
        self._collection, self._session = collection, session

    def __getattr__(self, name: str):
        method = getattr(self._collection, name)
        if name not in self._READS:
            return method

        def bound(*args, **kwargs):
            if kwargs.get("session") is None:
                kwargs["session"] = self._session
            return method(*args, **kwargs)
        return bound


# ------------------------------------------------------------------------------- writing

def _check_file(path: pathlib.Path, entry: dict) -> None:
    sha, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
                size += len(block)
    except OSError as err:
        raise BackupError(f"{path} cannot be read: {err.strerror or err}") from err
    if size != entry["bytes"] or sha.hexdigest() != entry["sha256"]:
        raise BackupError(f"{path} is not the file the backup wrote ({size:,} bytes, the manifest says "
                          f"{entry['bytes']:,}, or its SHA-256 differs)")


def _load(db, name: str, source: pathlib.Path, entry: dict) -> None:
    meta = json_util.loads((source / f"{name}.metadata.json").read_text())
    options = {k: v for k, v in meta.get("options", {}).items() if k in ("capped", "size", "max")}
    if name not in db.list_collection_names():
        db.create_collection(name, **options)
    collection = db[name]
    raw = collection.with_options(codec_options=_RAW)
    chunk, chunk_bytes = [], 0
    with open(source / entry["file"], "rb") as handle:
        for document in bson.decode_file_iter(handle, codec_options=_RAW):
            chunk.append(document)
            chunk_bytes += len(document.raw)
            if chunk_bytes >= INSERT_BYTES:
                raw.insert_many(chunk, ordered=False)
                chunk, chunk_bytes = [], 0
    if chunk:
        raw.insert_many(chunk, ordered=False)
    # Indexes after the documents: one build over the whole collection instead of one entry per insert.
    models = [IndexModel(list(spec["key"].items()), **{k: v for k, v in spec.items() if k not in ("key", "v")})
              for spec in meta.get("indexes", ()) if spec.get("name") != "_id_"]
    if models:
        collection.create_indexes(models)


def _write_durably(path: pathlib.Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
