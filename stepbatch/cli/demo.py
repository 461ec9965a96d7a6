"""`stepbatch demo`: from nothing to a report — database, mesh, signed traffic, replay, detection matrix."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="start the database, seed a demo area, generate and replay signed traffic",
        description="Starts the embedded database (or uses MONGODB_URI), generates signed traffic of "
                    "walkers around Budapest with an attack mix, seeds the triangles it walks on, "
                    "replays it batch by batch with one transaction per batch, and prints the "
                    "report with its detection matrix and the throughput of each stage.")
    parser.add_argument("--proofs", type=int, default=100_000, help="proofs to generate (100000)")
    parser.add_argument("--walkers", type=int, default=2_000, help="walkers (2000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (7)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="proofs per batch (10000)")
    parser.add_argument("--db", default="stepbatch_demo",
                        help="database to (re)create for the demo (stepbatch_demo)")
    parser.add_argument("--work-dir", default=None,
                        help="where traffic and verdicts go (default: $STEPBATCH_DATA_DIR/demo)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from stepbatch.cli.gen import write_traffic
    from stepbatch.config import Config
    from stepbatch.mesh.regions import IdRegion
    from stepbatch.store import servers
    from stepbatch.store.mongo import MongoStore
    from stepbatch.tools import gen
    from stepbatch.tools.replay import ProgressBar, print_summary, replay
    from stepbatch.tools.report import build_report, format_report
    from stepbatch.validator import Validator

    config = Config.from_env(mongodb_uri=args.mongodb_uri, db_name=args.db)
    work = pathlib.Path(args.work_dir or os.path.join(config.data_dir, "demo"))
    work.mkdir(parents=True, exist_ok=True)
    traffic_path, verdicts_path = work / "traffic.parquet", work / "verdicts.parquet"
    say = print
    started = time.perf_counter()

    say(f"1/4 database: {'MONGODB_URI' if config.mongodb_uri else 'embedded ' + servers.chosen().title}, "
        f"database {config.db_name} (recreated)")
    store = MongoStore(config.mongodb_uri, config.db_name, config=config, recreate=True)
    try:
        clock = time.perf_counter()
        traffic = gen.generate(walkers=args.walkers, proofs=args.proofs, seed=args.seed)
        write_traffic(traffic, str(traffic_path), "parquet")
        gen_s = time.perf_counter() - clock
        say(f"2/4 generated {traffic.proofs.num_rows:,} signed proofs of {args.walkers:,} walkers "
            f"({traffic.proofs.num_rows / gen_s:,.0f} proofs/s) → {traffic_path}")

        clock = time.perf_counter()
        store.declare(IdRegion.of_ids(traffic.triangles))
        say(f"3/4 declared the {len(traffic.triangles):,} level-{traffic.params.get('level', '?')} "
            f"triangles of the demo area in {time.perf_counter() - clock:.2f} s")

        say(f"4/4 replaying in batches of {args.batch_size:,}, one transaction each")
        bar = None if args.quiet else ProgressBar(traffic.proofs.num_rows)
        try:
            with Validator(store, config) as validator:
                summary = replay([str(traffic_path)], validator, out=str(verdicts_path),
                                 batch_size=args.batch_size, progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
    finally:
        store.close()

    print()
    print_summary(summary, committed=True, out_path=str(verdicts_path), out=sys.stdout)
    print()
    report = build_report(pl.read_parquet(verdicts_path))
    print(format_report(report))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; "
          f"`stepbatch report {verdicts_path}` shows the report again")
    mismatched = report.mismatches.height if report.mismatches is not None else 0
    return 1 if mismatched else 0
