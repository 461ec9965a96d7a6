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
        "seed", help="insert every triangle of some levels (idempotent, resumable)",
        description=(
            "Insert the triangles of levels A..B, with polygon, centroid and h3 cell, into the "
            "triangles collection. Triangles already there are left as they are, so an interrupted "
            "run is finished by running it again. Level L has 20·4^(L-1) triangles (level 10: "
            "5,242,880); use --bbox to seed a region and --dry-run to see counts and sizes first."))
    seed.add_argument("--levels", required=True, type=_level_range, metavar="A-B",
                      help="levels to seed, e.g. 1-8 (or one level, e.g. 12)")
    seed.add_argument("--bbox", type=_bbox, default=None, metavar="W,S,E,N",
                      help="only triangles near this box, in degrees (W > E crosses the antimeridian)")
    seed.add_argument("--dry-run", action="store_true",
                      help="print counts and a storage estimate; write nothing")
    seed.add_argument("--db", default=None, help="database name (default: $STEPBATCH_DB or step)")
    seed.add_argument("--no-progress", action="store_true", help="no progress bar")
    seed.set_defaults(func=run_seed)

    drop = commands.add_parser(
        "drop", help="delete every triangle of one level",
        description="Delete the triangles of one level. Refused while any of them has clicks, "
                    "unless --force.")
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
                report = seed_mesh(store, args.levels, bbox=args.bbox,
                                   progress=not args.no_progress and sys.stderr.isatty())
            except ValueError as err:
                raise UsageError(str(err)) from err
    print(f"{'level':>5} {'triangles':>12} {'inserted':>12} {'existing':>12} {'est. MB':>10} "
          f"{'seconds':>8}")
    for level in report.levels:
        print(f"{level.level:>5} {level.planned:>12,} {level.inserted:>12,} {level.existing:>12,} "
              f"{level.estimated_bytes / 1e6:>10.1f} {level.seconds:>8.1f}")
    print(f"{'total':>5} {report.planned:>12,} {report.inserted:>12,} {report.existing:>12,} "
          f"{report.estimated_bytes / 1e6:>10.1f}" + ("   (dry run: nothing written)" if args.dry_run else ""))
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
