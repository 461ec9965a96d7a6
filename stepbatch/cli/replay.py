"""`stepbatch replay INPUT…`: re-validate an archive of proofs, commit it, write the verdicts."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
import pyarrow.parquet as pq

from stepbatch.cli import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "replay", help="re-validate proofs from Parquet / NDJSON / JSON / Arrow files",
        description="Stream proofs from the inputs in batches, validate them in input order, commit "
                    "each batch in one transaction (or keep state in memory with --no-commit), and "
                    "write one verdict per row. Memory stays bounded by --batch-size.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="proof files, read in order")
    parser.add_argument("--out", help="write the verdicts to this Parquet file")
    parser.add_argument("--no-commit", action="store_true",
                        help="write nothing to the database: prior state is read from it (or from "
                             "--triangles alone) and the batches' effects are kept in memory")
    parser.add_argument("--resume", action="store_true",
                        help="continue after the last batch this run committed before it stopped")
    parser.add_argument("--cluster", default=None, metavar="ADDRESS",
                        help="run the stateless stage (signatures) on a Dask cluster: local[:N] starts N "
                             "local workers for the run, tcp://HOST:PORT uses a running scheduler "
                             "(pip install -e '.[cluster]')")
    parser.add_argument("--batch-size", type=int, default=10_000, help="proofs per batch (10000)")
    parser.add_argument("--triangles", metavar="FILE",
                        help="JSON list of triangle ids (or `stepbatch gen`'s .triangles.json) that "
                             "must exist before the replay; with --no-commit no database is used")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stepbatch.config import Config
    from stepbatch.mesh.regions import IdRegion
    from stepbatch.store.base import StoreError
    from stepbatch.store.memory import MemoryStore
    from stepbatch.tools.replay import ReplayError, print_summary, replay
    from stepbatch.validator import Validator

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.resume and args.no_commit:
        raise UsageError("--resume continues committed batches; it cannot go with --no-commit")
    triangles = _triangle_ids(args.triangles) if args.triangles else []
    config = Config.from_env(mongodb_uri=args.mongodb_uri)

    region = IdRegion.of_ids(triangles) if triangles else None
    if args.no_commit and region is not None:
        store = MemoryStore(keep_verdicts=False, regions=[region])
    else:
        from stepbatch.store.mongo import MongoStore
        database = MongoStore(config.mongodb_uri, config.db_name, config=config)
        if region is not None:
            database.declare(region)
        store = MemoryStore(backing=database, keep_verdicts=False) if args.no_commit else database

    bar = None if args.quiet else _progress_bar(args.inputs)
    cluster = None
    try:
        if args.cluster:
            from stepbatch.tools.cluster import ClusterError, DaskCluster
            try:
                cluster = DaskCluster(args.cluster, config)
            except ClusterError as err:
                raise StoreError(str(err)) from err
        with Validator(store, config) as validator:
            summary = replay(args.inputs, validator, out=args.out, commit=not args.no_commit,
                             resume=args.resume, batch_size=args.batch_size,
                             progress=bar.update if bar else None, cluster=cluster)
    except ReplayError as err:
        raise StoreError(str(err)) from err
    finally:
        if bar is not None:
            bar.close()
        if cluster is not None:
            cluster.close()
        closing = getattr(store, "backing", None) or store
        closing.close()
    print_summary(summary, committed=not args.no_commit, out_path=args.out, out=sys.stdout)
    return 0


def _triangle_ids(path: str) -> list[str]:
    try:
        document = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"--triangles {path}: cannot read a JSON list of triangle ids: {err}") from err
    ids = document.get("triangles") if isinstance(document, dict) else document
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise UsageError(f"--triangles {path}: expected a JSON list of triangle ids")
    from stepbatch.mesh import ids as mesh_ids

    decoded = mesh_ids.decode_ids(ids)
    if not decoded.valid.all():
        bad = int(np.flatnonzero(~decoded.valid)[0])
        raise UsageError(f"--triangles {path}: entry {bad + 1} ({ids[bad][:80]!r}) is not a triangle id: "
                         f"{decoded.errors[bad].as_py()}")
    return ids


def _progress_bar(inputs):
    from stepbatch.tools.replay import ProgressBar

    total = 0
    for name in inputs:
        try:
            total += pq.ParquetFile(name).metadata.num_rows
        except Exception:
            total = None
            break
    return ProgressBar(total)
