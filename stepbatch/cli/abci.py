"""`stepbatch abci`: the ABCI application of CometBFT, served on a socket (SPEC §8)."""

from __future__ import annotations

import argparse
import os
import platform
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
    parser.add_argument("--metrics-address", default=None, metavar="HOST:PORT",
                        help="serve the app's Prometheus metrics at http://HOST:PORT/metrics (default: none)")
    parser.add_argument("--signature-memo", type=int_in_range("a memo size", 0, 100_000_000), default=None,
                        metavar="N", help="signatures whose recovery is remembered, so a proof seen at CheckTx is "
                                          "not recovered again in its block (0: off; default 500,000)")
    parser.add_argument("--faulty-speed-limit", type=float, default=None, metavar="MPS",
                        help=argparse.SUPPRESS)  # a deliberately faulty validator (`localnet up --byzantine`)
    # Failpoints of the crash tests, never set by an environment variable: `crash-before-commit:H` (the
    # app SIGKILLs itself between FinalizeBlock and Commit of H) and `lose-commit-ack:H` (it commits H,
    # then acts as if the acknowledgement were lost).
    # A Byzantine proposer for the consensus tests: every block it proposes carries FILE's transactions
    # (one per line, in hex) after the mempool's.
    parser.add_argument("--byzantine-propose", default=None, metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--failpoint", type=_failpoint, action="append", default=[], metavar="NAME:HEIGHT",
                        help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _failpoint(text: str) -> tuple[str, int]:
    from stepbatch.abci.app import FAILPOINTS

    name, _, height = text.partition(":")
    if name not in FAILPOINTS or not height.isdigit():
        raise argparse.ArgumentTypeError(f"a failpoint is NAME:HEIGHT with NAME one of {', '.join(FAILPOINTS)}")
    return name, int(height)


# glibc picks, per CPU, one of several builds of sin, cos, asin and atan2 (SSE2, or FMA and AVX2 where
# the CPU has them), and they differ in the last bit (README, "Determinism across machines"). A
# consensus node asks for the SSE2 build, which every x86-64 CPU runs, before its libm is loaded.
LIBM_TUNABLE = "glibc.cpu.hwcaps=-AVX2,-FMA"


def _with_one_libm() -> None:
    """Re-execute this command with LIBM_TUNABLE in force, unless it already is (or this is not glibc)."""
    current = os.environ.get("GLIBC_TUNABLES", "")
    if LIBM_TUNABLE in current.split(":") or platform.libc_ver()[0] != "glibc":
        return
    env = {**os.environ, "GLIBC_TUNABLES": ":".join(filter(None, [current, LIBM_TUNABLE]))}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def run(args: argparse.Namespace) -> int:
    _with_one_libm()
    from stepbatch import logs
    from stepbatch.abci import protos, server
    from stepbatch.abci.app import StepApplication
    from stepbatch.config import Config
    from stepbatch.store.mongo import MongoStore

    try:
        logs.configure()
    except ValueError as err:
        raise UsageError(str(err)) from err
    config = Config.from_env(mongodb_uri=args.mongodb_uri, db_name=args.db)
    try:
        protos.load()
    except protos.ProtoError as err:
        raise UsageError(str(err)) from err
    memo = {} if args.signature_memo is None else {"memo_entries": args.signature_memo}
    byzantine = []
    if args.byzantine_propose:
        try:
            with open(args.byzantine_propose) as lines:
                byzantine = [bytes.fromhex(line.strip()) for line in lines if line.strip()]
        except (OSError, ValueError) as err:
            raise UsageError(f"--byzantine-propose {args.byzantine_propose}: {err}") from err
    metrics = None
    if args.metrics_address:
        from stepbatch.abci.metrics import AppMetrics, start_exporter

        metrics = AppMetrics()
        try:
            start_exporter(args.metrics_address)
        except (OSError, ValueError) as err:
            raise UsageError(f"cannot serve metrics on {args.metrics_address}: {err}") from err
    store = MongoStore(config.mongodb_uri, config.db_name, config=config)
    try:
        app = StepApplication(store, config, faulty_speed_limit=args.faulty_speed_limit,
                              failpoints=dict(args.failpoint), byzantine_txs=byzantine, metrics=metrics, **memo)
    except BaseException:
        store.close()
        raise
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
