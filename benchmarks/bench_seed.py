"""Seeding time and size per mesh level: `seed_mesh` of one level at a time into a fresh database.

Runs against $MONGODB_URI, else a fresh embedded SecantusDB in a temporary directory.

    .venv/bin/python benchmarks/bench_seed.py [--levels 1-8]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import pymongo

from stepbatch.store.embedded import EmbeddedServer
from stepbatch.store.mongo import MongoStore
from stepbatch.store.seed import seed_mesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1-8", help="A-B")
    args = parser.parse_args()
    first, _, last = args.levels.partition("-")
    uri = os.environ.get("MONGODB_URI")
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as data_dir:
        server = None if uri else EmbeddedServer(data_dir).start()
        uri = uri or server.uri
        try:
            with MongoStore(uri, "bench_seed") as store:
                print(f"{'level':>5} {'triangles':>10} {'seconds':>8} {'per s':>8} {'BSON B/doc':>10}")
                for level in range(int(first), int(last or first) + 1):
                    report = seed_mesh(store, [level], progress=False).levels[0]
                    print(f"{level:>5} {report.planned:>10,} {report.seconds:>8.1f} "
                          f"{report.planned / max(report.seconds, 1e-9):>8,.0f} "
                          f"{report.bson_bytes_per_document:>10.0f}")
            with pymongo.MongoClient(uri) as client:
                client.drop_database("bench_seed")
        finally:
            if server is not None:
                server.close()


if __name__ == "__main__":
    main()
