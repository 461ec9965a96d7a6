"""`stepbatch db serve`: the embedded SecantusDB server in the foreground, for other processes."""

from __future__ import annotations

import argparse
import os
import sys

from stepbatch.cli import int_in_range


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "db", help="run the embedded database server, or migrate a database",
        description="The embedded SecantusDB server (a MongoDB-wire server on WiredTiger), and "
                    "moving a database written by an earlier stepbatch to the current layout.")
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
    migrate = commands.add_parser(
        "migrate", help="move a database of an earlier stepbatch layout to the current one",
        description=("Move the database named by STEPBATCH_DB (at MONGODB_URI, else the embedded "
                     "server's data directory) to the current layout: from the first (one document per "
                     "event and rejection) batch by batch, and a migration that stops can be run again; "
                     "from the second (child documents written at each subdivision) by its version "
                     "number alone."))
    migrate.add_argument("--data-dir", default=None, metavar="DIR",
                         help="embedded server data directory (default: $STEPBATCH_DATA_DIR/db)")
    migrate.set_defaults(func=run_migrate)


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


def run_migrate(args: argparse.Namespace) -> int:
    import pymongo

    from stepbatch.config import Config
    from stepbatch.store.embedded import EmbeddedServer
    from stepbatch.store.migrate import migrate

    config = Config.from_env(mongodb_uri=args.mongodb_uri)
    server = None
    if config.mongodb_uri is None:
        server = EmbeddedServer(args.data_dir or os.path.join(config.data_dir, "db")).start()
    try:
        with pymongo.MongoClient(config.mongodb_uri or server.uri, tz_aware=True) as client:
            report = migrate(client, config.db_name, progress=lambda r: print(
                f"\rmoved {r.batches:,} batches, {r.rows:,} rows", end="", file=sys.stderr))
    finally:
        if server is not None:
            server.close()
    print(f"\ndatabase {config.db_name}: moved {report.batches:,} batches ({report.rows:,} rows, "
          f"{report.nonces:,} accepted proofs); {report.already_moved:,} were moved before", file=sys.stderr)
    return 0


_port = int_in_range("a port", 0, 65535)
