"""MongoDB store throughput: `MongoStore.commit` against the raw bulk-write rate of the same server, and
seeding time per mesh level.

(a) commit: realistic signed traffic (`stepbatch.tools.gen`, honest walkers and attacks) in batches; each
    batch is validated against the store (untimed), then committed with `store.commit` (timed: plan
    building, guards, one transaction). Right after, the identical documents are written into a
    second database with plain insert_many / bulk_write by `_id` in one transaction, without guards
    (timed). Both databases go through the same states, so the ratio store/raw is the cost of the
    store's bookkeeping and guards. `load_state` time per batch is shown beside it.
(b) seeding: `seed_mesh` per level into a fresh database; seconds and triangles per second.

Runs against $MONGODB_URI, else a fresh embedded SecantusDB in a temporary directory.

    .venv/bin/python benchmarks/bench_commit.py [--proofs 100000] [--batch 10000] [--seed-levels 1-8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time

import pymongo
from pymongo import UpdateOne

from stepbatch import Validator
from stepbatch.config import Config
from stepbatch.store import documents
from stepbatch.store.embedded import EmbeddedServer
from stepbatch.store.mongo import MongoStore
from stepbatch.store.seed import seed_mesh
from stepbatch.tools import gen


def raw_write(db, plan: documents.CommitPlan, client) -> None:
    """The plan's documents written as plainly as the server allows: one transaction, no guards."""
    with client.start_session() as session, session.start_transaction():
        db.batches.insert_one(plan.batch, session=session)
        updates = [UpdateOne({"_id": f["_id"]}, u) for f, u in plan.triangle_updates]
        updates += [UpdateOne(f, u, upsert=True) for f, u in plan.children_upserts]
        if updates:
            db.triangles.bulk_write(updates, ordered=False, session=session)
        if plan.triangle_inserts:
            db.triangles.insert_many(plan.triangle_inserts, ordered=False, session=session)
        if plan.account_updates:
            db.accounts.bulk_write([UpdateOne({"_id": f["_id"]}, u) for f, u in plan.account_updates],
                                   ordered=False, session=session)
        if plan.account_inserts:
            db.accounts.insert_many(plan.account_inserts, ordered=False, session=session)
        if plan.events:
            db.triangle_events.insert_many(plan.events, ordered=False, session=session)
        if plan.rejections:
            db.rejections.insert_many(plan.rejections, ordered=False, session=session)


def bench_commit(uri: str, proofs: int, batch_rows: int, walkers: int) -> None:
    started = time.perf_counter()
    traffic = gen.generate(walkers=walkers, proofs=proofs, seed=11)
    print(f"generated {proofs:,} signed proofs from {walkers} walkers in "
          f"{time.perf_counter() - started:.1f} s; {len(traffic.triangles)} base triangles")
    config = Config(signature_threads=0)
    _drop(uri, "bench_commit_store", "bench_commit_raw")
    with MongoStore(uri, "bench_commit_store", config=config) as store, \
            MongoStore(uri, "bench_commit_raw", config=config) as raw:
        store.add_triangles(traffic.triangles)
        raw.add_triangles(traffic.triangles)
        commit_s = raw_s = load_s = 0.0
        rows = accepted = 0
        print(f"{'batch':>5} {'rows':>7} {'accepted':>8} {'load_state s':>12} {'commit s':>9} {'raw s':>7}")
        with Validator(store, config) as validator:
            for number, start in enumerate(range(0, proofs, batch_rows)):
                batch = traffic.proofs.slice(start, batch_rows)
                result = validator.validate(batch, f"bench-{number}")
                outcome = result.outcome
                plan = documents.plan_commit(outcome, dt.datetime.now(dt.timezone.utc))
                t0 = time.perf_counter()
                store.commit(outcome)
                t1 = time.perf_counter()
                raw_write(raw.db, plan, raw.client)
                t2 = time.perf_counter()
                commit_s += t1 - t0
                raw_s += t2 - t1
                load_s += result.timings.get("resolve", 0.0)
                rows += batch.num_rows
                accepted += outcome.counts.get("ACCEPTED", 0)
                print(f"{number:>5} {batch.num_rows:>7,} {outcome.counts.get('ACCEPTED', 0):>8,} "
                      f"{result.timings.get('resolve', 0.0):>12.2f} {t1 - t0:>9.2f} {t2 - t1:>7.2f}")
        print(f"store.commit: {rows / commit_s:,.0f} proofs/s ({commit_s:.1f} s for {rows:,} rows, "
              f"{accepted:,} accepted)")
        print(f"raw bulk write of the same documents: {rows / raw_s:,.0f} proofs/s ({raw_s:.1f} s)")
        print(f"ratio store/raw throughput: {raw_s / commit_s:.2f} (target >= 0.7)")
        print(f"resolve stage incl. load_state: {rows / load_s:,.0f} proofs/s ({load_s:.1f} s)")
    _drop(uri, "bench_commit_store", "bench_commit_raw")


def _drop(uri: str, *names: str) -> None:
    with pymongo.MongoClient(uri) as client:
        for name in names:
            client.drop_database(name)


def bench_seed(uri: str, levels: range) -> None:
    _drop(uri, "bench_seed")
    with MongoStore(uri, "bench_seed") as store:
        print(f"{'level':>5} {'triangles':>10} {'seconds':>8} {'per s':>8} {'BSON B/doc':>10}")
        for level in levels:
            report = seed_mesh(store, [level], progress=False).levels[0]
            print(f"{level:>5} {report.planned:>10,} {report.seconds:>8.1f} "
                  f"{report.planned / max(report.seconds, 1e-9):>8,.0f} {report.bson_bytes_per_document:>10.0f}")
    _drop(uri, "bench_seed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proofs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--walkers", type=int, default=1_000)
    parser.add_argument("--seed-levels", default="1-8", help="A-B, or 0 to skip seeding")
    args = parser.parse_args()
    uri = os.environ.get("MONGODB_URI")
    with tempfile.TemporaryDirectory(prefix="bench-commit-") as data_dir:
        server = None
        if not uri:
            server = EmbeddedServer(data_dir).start()
            uri = server.uri
            print(f"embedded SecantusDB at {uri}")
        try:
            bench_commit(uri, args.proofs, args.batch, args.walkers)
            if args.seed_levels != "0":
                first, _, last = args.seed_levels.partition("-")
                bench_seed(uri, range(int(first), int(last or first) + 1))
        finally:
            if server is not None:
                server.close()


if __name__ == "__main__":
    main()
