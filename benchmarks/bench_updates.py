"""What one document write costs the database, by the form of the write: the measurements behind
`stepbatch/store/layout.py`.

A collection holds `--documents` triangle documents as `stepbatch.store.documents` builds them (plus,
for comparison, as many documents of four fields). Each round then changes `--per-round` documents
not touched before, in one transaction, once in every form, the forms taking turns so that the
machine's drift spreads over all of them:

- `insert`: new triangle documents, built beforehand (what a triangle's first change writes in
  layout 3);
- `$set by _id`: one `UpdateOne({_id}, {$set: clicks, updatedAt, lastClickAt})` per document, in
  one bulk write (what every later change writes);
- `$set by _id, small documents`: the same on documents of four fields;
- `update_many, $in of G`: one `update_many({_id: {$in: G ids}}, {$inc, $set})` per G documents;
- `delete + insert`: `delete_many` of the ids by `$in`, then `insert_many` of their new documents
  (built inside the transaction, ~25 µs each).

Prints µs per document, the best and the median round of each form.

    .venv/bin/python benchmarks/bench_updates.py [--documents 40000] [--per-round 1000] [--rounds 4]

Uses `MONGODB_URI` when set (database `bench_updates`, dropped first), else an embedded server in a
temporary directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time

import numpy as np
import pymongo
from pymongo import UpdateOne

from stepbatch import mesh
from stepbatch.mesh import keys as mesh_keys
from stepbatch.store.documents import triangle_documents
from stepbatch.store.embedded import EmbeddedServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=40_000)
    parser.add_argument("--per-round", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    server = None
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        server = EmbeddedServer(tempfile.mkdtemp(prefix="stepbatch-bench-updates-")).start()
        uri = server.uri
    try:
        run(uri, args)
    finally:
        if server is not None:
            server.close()


def run(uri: str, args: argparse.Namespace) -> None:
    client = pymongo.MongoClient(uri)
    client.drop_database("bench_updates")
    db = client.bench_updates
    now = dt.datetime.now(dt.timezone.utc)
    # Level-20 triangles of one area: as many as the collection and the inserts need.
    base = mesh_keys.key_array([mesh.decode_ids([mesh.triangle_at(47.4979, 19.0402, 12)]).keys[0]])
    keys = base
    while len(keys) < args.documents + args.rounds * args.per_round:
        keys = mesh_keys.child_keys(keys).reshape(-1)
    keys = np.sort(keys)
    stored, fresh = keys[:args.documents], keys[args.documents:]
    for start in range(0, len(stored), 5_000):
        docs = triangle_documents(stored[start:start + 5_000], now)
        db.triangles.insert_many(docs)
        db.small.insert_many([{"_id": doc["_id"], "state": "active", "clicks": 0, "updatedAt": now}
                              for doc in docs])
    ids = [doc["_id"] for doc in db.triangles.find({}, {"_id": 1})]
    rng = np.random.default_rng(7)
    order = [ids[i] for i in rng.permutation(len(ids))]
    change = {"$set": {"clicks": 2, "updatedAt": now, "lastClickAt": now}}

    def update_many(group: int):
        def write(part, session):
            for start in range(0, len(part), group):
                db.triangles.update_many({"_id": {"$in": part[start:start + group]}},
                                         {"$inc": {"clicks": 1}, "$set": {"updatedAt": now, "lastClickAt": now}},
                                         session=session)
        return write

    def delete_insert(part, session):
        db.triangles.delete_many({"_id": {"$in": part}}, session=session)
        db.triangles.insert_many(triangle_documents(mesh.decode_ids(part).keys, now), session=session)

    def insert(part, session):
        db.triangles.insert_many(part, session=session)

    # name → (what it writes: "new" documents, built before the clock starts, or "stored" ids; the write)
    forms = {
        "insert": ("new", insert),
        "$set by _id": ("stored", lambda part, session: db.triangles.bulk_write(
            [UpdateOne({"_id": i}, change) for i in part], ordered=False, session=session)),
        "$set by _id, small documents": ("stored", lambda part, session: db.small.bulk_write(
            [UpdateOne({"_id": i}, change) for i in part], ordered=False, session=session)),
        "update_many, $in of 25": ("stored", update_many(25)),
        "update_many, $in of 100": ("stored", update_many(100)),
        "delete + insert": ("stored", delete_insert),
    }
    per_doc: dict[str, list[float]] = {name: [] for name in forms}
    sources = {"stored": iter(order[k:k + args.per_round] for k in range(0, len(order), args.per_round)),
               "new": (triangle_documents(fresh[k:k + args.per_round], now)
                       for k in range(0, len(fresh), args.per_round))}
    for _ in range(args.rounds):
        for name, (source, write) in forms.items():
            part = next(sources[source])
            started = time.perf_counter()
            with client.start_session() as session, session.start_transaction():
                write(part, session)
            per_doc[name].append((time.perf_counter() - started) / len(part) * 1e6)
    print(f"{args.per_round:,} documents per transaction, {args.rounds} rounds, in a collection of "
          f"{args.documents:,} triangle documents")
    for name, values in per_doc.items():
        print(f"  {name:32s} best {min(values):6.0f} µs, median {statistics.median(values):6.0f} µs per document")
    client.drop_database("bench_updates")
    client.close()


if __name__ == "__main__":
    main()
