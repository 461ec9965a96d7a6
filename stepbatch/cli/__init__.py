"""The `stepbatch` command line: one module per command, one driver that maps failures to exit codes.

Exit codes (SPEC §6): 0 success; 2 usage or unreadable input; 1 anything else, with one clear line on
stderr and never a traceback for an expected failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command name → module under stepbatch.cli; each module defines `register(subparsers)`, which adds
# its parser and sets `func(args) -> int`.
COMMANDS = {
    "demo": "demo",
    "gen": "gen",
    "replay": "replay",
    "mesh": "mesh",
    "bench": "bench",
    "report": "report",
    "db": "db",
    "serve": "serve",
    "abci": "abci",
    "localnet": "localnet",
    "sign": "sign",
}


class UsageError(Exception):
    """Bad arguments or unreadable input: exit code 2."""


def int_in_range(what: str, low: int, high: int):
    """An argparse type: an integer `low`..`high`, refused with one line naming `what`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} is an integer {low}-{high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} is an integer {low}-{high}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepbatch",
        description="Vectorized batch validator for STEP proofs of location.")
    parser.add_argument("--mongodb-uri", default=None,
                        help="MongoDB URI (default: $MONGODB_URI, else the embedded SecantusDB server)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(f"stepbatch.cli.{module}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format=f"stepbatch {args.command}: %(message)s", level=logging.WARNING)
    from stepbatch.config import ConfigError
    from stepbatch.ingest import ProofSourceError
    from stepbatch.store.base import StoreError, brief

    try:
        return int(args.func(args) or 0)
    except (UsageError, ProofSourceError, ConfigError) as err:
        print(f"stepbatch {args.command}: {brief(err, 1000)}", file=sys.stderr)
        return 2
    except StoreError as err:
        print(f"stepbatch {args.command}: {brief(err, 1000)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stepbatch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
