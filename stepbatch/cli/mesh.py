"""`stepbatch mesh seed|drop`: put mesh levels into the triangles collection, or take one out."""

from __future__ import annotations

import argparse
import sys

from stepbatch.cli import UsageError, int_in_range
from stepbatch.protocol import MAX_LEVEL


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "mesh", help="seed mesh levels into the database, or drop one",
        description="Manage the STEP-TRI-v1 triangles stored in the database (SPEC §3, §5).")
    commands = parser.add_subparsers(dest="mesh_command", metavar="ACTION", required=True)

    seed = commands.add_parser(
        "seed", help="declare mesh levels (whole, or near a box) so their triangles exist",
        description=(
            "Declare levels A..B (whole, or only the triangles near --bbox): from then on each of their "
            "triangles exists, active with 0 clicks, and gets a document the first time its state "
            "changes. Declaring takes a moment whatever the size (level 10 alone has 5,242,880 "
            "triangles). --materialize also inserts a document per triangle, with polygon, centroid "
            "and h3 cell (idempotent: an interrupted run is finished by running it again). --dry-run "
            "shows what a declaration covers and what materializing it would store."))
    seed.add_argument("--levels", required=True, type=_level_range, metavar="A-B",
                      help="levels to seed, e.g. 1-8 (or one level, e.g. 12)")
    seed.add_argument("--bbox", type=_bbox, default=None, metavar="W,S,E,N",
                      help="only triangles near this box, in degrees (W > E crosses the antimeridian)")
    seed.add_argument("--dry-run", action="store_true",
                      help="print what the declaration covers and a storage estimate; write nothing")
    seed.add_argument("--materialize", action="store_true",
                      help="also insert one document per triangle (slow for deep levels)")
    seed.add_argument("--db", default=None, help="database name (default: $STEPBATCH_DB or step)")
    seed.add_argument("--no-progress", action="store_true", help="no progress bar")
    seed.set_defaults(func=run_seed)

    drop = commands.add_parser(
        "drop", help="take one level out of the declarations and delete its triangles",
        description="Take one level out of every declaration and delete its triangle documents. "
                    "Refused while any of them has clicks, unless --force.")
    drop.add_argument("--level", required=True, type=_level, metavar="N", help=f"level to drop (1-{MAX_LEVEL})")
    drop.add_argument("--force", action="store_true", help="drop even clicked triangles")
    drop.add_argument("--db", default=None, help="database name (default: $STEPBATCH_DB or step)")
    drop.set_defaults(func=run_drop)


def run_seed(args: argparse.Namespace) -> int:
    from stepbatch.store.seed import seed_mesh

    if args.dry_run:
        try:
            report = seed_mesh(None, args.levels, bbox=args.bbox, dry_run=True, progress=False)
        except ValueError as err:
            raise UsageError(str(err)) from err
    else:
        with _store(args) as store:
            try:
                report = seed_mesh(store, args.levels, bbox=args.bbox, materialize=args.materialize,
                                   progress=not args.no_progress and sys.stderr.isatty())
            except ValueError as err:
                raise UsageError(str(err)) from err
    print(f"{'level':>5} {'triangles':>14} {'documents':>12} {'existing':>12} {'est. MB':>10} "
          f"{'seconds':>8}")
    for level in report.levels:
        print(f"{level.level:>5} {level.planned:>14,} {level.inserted:>12,} {level.existing:>12,} "
              f"{level.estimated_bytes / 1e6:>10.1f} {level.seconds:>8.1f}")
    print(f"{'total':>5} {report.planned:>14,} {report.inserted:>12,} {report.existing:>12,} "
          f"{report.estimated_bytes / 1e6:>10.1f} {report.seconds:>8.1f}")
    if args.dry_run:
        print("dry run: nothing written (est. MB is what --materialize would store)")
    elif args.materialize:
        print(f"declared and materialized {report.planned:,} triangles")
    else:
        print(f"declared {report.planned:,} triangles in {report.seconds:.2f} s; each gets a document "
              f"when its state first changes (--materialize writes them all now)")
    return 0


def run_drop(args: argparse.Namespace) -> int:
    from stepbatch.store.seed import drop_level

    with _store(args) as store:
        deleted = drop_level(store, args.level, force=args.force)
    print(f"dropped {deleted:,} level-{args.level} triangles")
    return 0


def _store(args: argparse.Namespace):
    from stepbatch.config import Config
    from stepbatch.store.mongo import MongoStore

    config = Config.from_env(mongodb_uri=args.mongodb_uri, db_name=args.db)
    return MongoStore(config.mongodb_uri, config.db_name, config=config)


_level = int_in_range("a level", 1, MAX_LEVEL)


def _level_range(text: str) -> range:
    first, _, last = text.partition("-")
    low, high = _level(first.strip()), _level(last.strip() or first.strip())
    if low > high:
        raise argparse.ArgumentTypeError(f"levels {text!r}: A must not exceed B in A-B")
    return range(low, high + 1)


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        west, south, east, north = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bbox is four numbers W,S,E,N in degrees, got {text!r}") from None
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= north <= 90):
        raise argparse.ArgumentTypeError(
            f"bbox {text!r}: need W and E in [-180, 180] and -90 <= S <= N <= 90")
    return west, south, east, north
