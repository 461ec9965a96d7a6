"""`stepbatch db serve`: the embedded SecantusDB server in the foreground, for other processes."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "db", help="run the embedded database server",
        description="The embedded SecantusDB server (a MongoDB-wire server on WiredTiger).")
    commands = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    serve = commands.add_parser(
        "serve", help="run the embedded server in the foreground until Ctrl-C",
        description=(
            "Start the embedded SecantusDB server on a loopback port with a persistent data "
            "directory and keep it running until Ctrl-C (or SIGTERM), then stop it cleanly. Other "
            "stepbatch processes reach it with the MONGODB_URI it prints."))
    serve.add_argument("--port", type=_port, default=0,
                       help="TCP port on 127.0.0.1 (default: a free one, printed at start)")
    serve.add_argument("--data-dir", default=None, metavar="DIR",
                       help="data directory (default: $STEPBATCH_DATA_DIR/db, else ./stepbatch-data/db)")
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from stepbatch.config import Config
    from stepbatch.store.embedded import EmbeddedServer

    data_dir = args.data_dir or os.path.join(Config.from_env().data_dir, "db")
    server = EmbeddedServer(data_dir, port=args.port)
    server.start()
    print(f"SecantusDB serving {server.data_dir} (pid {server.pid}, log {server.log_path})")
    print(f"MONGODB_URI={server.uri}", flush=True)
    code = server.serve_forever()
    if code in (0, None):
        print("SecantusDB stopped", flush=True)
        return 0
    reason = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    print(f"stepbatch db serve: SecantusDB {reason}; its log: {server.log_path}", file=sys.stderr)
    return 1


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is an integer 0-65535, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is an integer 0-65535, got {port}")
    return port
