"""`stepbatch abci`: the ABCI application of CometBFT, served on a socket (SPEC §8)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from stepbatch.cli import UsageError, int_in_range


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "abci", help="serve the ABCI application for a CometBFT node",
        description=(
            "Serve stepbatch as the ABCI 2.0 application of a CometBFT v0.38 node: one block is one "
            "batch, committed in one transaction with the block's height and app hash. Each validator "
            "keeps its own database (--db). The chain's gates come from the genesis app_state."))
    parser.add_argument("--address", default="tcp://127.0.0.1:26658",
                        help="where CometBFT connects (proxy_app): tcp://HOST:PORT or unix:///PATH")
    parser.add_argument("--db", default=None, help="this validator's database (default: $STEPBATCH_DB or step)")
    parser.add_argument("--signature-memo", type=int_in_range("a memo size", 0, 100_000_000), default=None,
                        metavar="N", help="signatures whose recovery is remembered, so a proof seen at CheckTx is "
                                          "not recovered again in its block (0: off; default 500,000)")
    parser.add_argument("--faulty-speed-limit", type=float, default=None, metavar="MPS",
                        help=argparse.SUPPRESS)  # a deliberately faulty validator (`localnet up --byzantine`)
    # Failpoints of the crash tests, never set by an environment variable: `crash-before-commit:H` (the
    # app SIGKILLs itself between FinalizeBlock and Commit of H) and `lose-commit-ack:H` (it commits H,
    # then acts as if the acknowledgement were lost).
    parser.add_argument("--failpoint", type=_failpoint, action="append", default=[], metavar="NAME:HEIGHT",
                        help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _failpoint(text: str) -> tuple[str, int]:
    from stepbatch.abci.app import FAILPOINTS

    name, _, height = text.partition(":")
    if name not in FAILPOINTS or not height.isdigit():
        raise argparse.ArgumentTypeError(f"a failpoint is NAME:HEIGHT with NAME one of {', '.join(FAILPOINTS)}")
    return name, int(height)


def run(args: argparse.Namespace) -> int:
    from stepbatch.abci import protos, server
    from stepbatch.abci.app import StepApplication
    from stepbatch.config import Config
    from stepbatch.store.mongo import MongoStore

    logging.getLogger("stepbatch.abci").setLevel(logging.INFO)
    config = Config.from_env(mongodb_uri=args.mongodb_uri, db_name=args.db)
    try:
        protos.load()
    except protos.ProtoError as err:
        raise UsageError(str(err)) from err
    store = MongoStore(config.mongodb_uri, config.db_name, config=config)
    memo = {} if args.signature_memo is None else {"memo_entries": args.signature_memo}
    app = StepApplication(store, config, faulty_speed_limit=args.faulty_speed_limit,
                          failpoints=dict(args.failpoint), **memo)
    try:
        try:
            listener = server.serve(app, args.address)
        except (OSError, ValueError) as err:
            raise UsageError(f"cannot listen on {args.address}: {err}") from err
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        thread = threading.Thread(target=listener.serve_forever, name="abci", daemon=True)
        thread.start()
        print(f"stepbatch abci: listening on {args.address} (database {config.db_name}, "
              f"height {app.height})", flush=True)
        stop.wait()
        listener.shutdown()
        listener.server_close()
    finally:
        app.close()
        store.close()
    print("stepbatch abci: stopped", file=sys.stderr, flush=True)
    return 0
