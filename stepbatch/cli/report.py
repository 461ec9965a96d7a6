"""`stepbatch report VERDICTS`: counts, rewards, busiest accounts and triangles, detection matrix."""

from __future__ import annotations

import argparse

from stepbatch.cli import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="summarise a verdict file written by `stepbatch replay --out`",
        description="Counts per code, acceptance rate, rewards paid, busiest accounts and triangles, "
                    "activity per h3 cell; for generated traffic (an expected_code column) the "
                    "detection matrix and every row whose verdict differs from its expected code.")
    parser.add_argument("verdicts", metavar="VERDICTS", help="verdict Parquet file")
    parser.add_argument("--top", type=int, default=10, help="rows in the top-N tables (10)")
    parser.add_argument("--h3-resolution", type=int, default=7, help="h3 resolution for activity (7)")
    parser.add_argument("--plot", metavar="FILE.png", help="draw throughput and the code breakdown")
    parser.add_argument("--fail-on-mismatch", action="store_true",
                        help="exit 1 when any verdict differs from its expected code")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from stepbatch.tools.report import build_report, format_report, plot_report

    try:
        verdicts = pl.read_parquet(args.verdicts)
    except (OSError, pl.exceptions.PolarsError) as err:
        raise UsageError(f"{args.verdicts}: cannot read a verdict file: {err}") from err
    missing = {"code", "account", "triangle_id", "reward_micro", "index"} - set(verdicts.columns)
    if missing:
        raise UsageError(f"{args.verdicts}: not a verdict file (missing {', '.join(sorted(missing))})")
    report = build_report(verdicts, top=args.top, h3_resolution=args.h3_resolution)
    print(format_report(report))
    if args.plot:
        plot_report(report, args.plot)
        print(f"plot: {args.plot}")
    if args.fail_on_mismatch and report.mismatches is not None and report.mismatches.height:
        return 1
    return 0
