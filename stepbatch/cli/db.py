"""`stepbatch db serve`: the embedded SecantusDB server in the foreground, for other processes."""

from __future__ import annotations

import argparse
import contextlib
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
            "Start the embedded SecantusDB server (the Rust one where scripts/bootstrap built it, "
            "else the Python one; STEPBATCH_DB_SERVER=rust|python chooses) on a loopback port with a "
            "persistent data directory and keep it running until Ctrl-C (or SIGTERM), then stop it "
            "cleanly. It prints which server and version it started. Other stepbatch processes reach "
            "it with the MONGODB_URI it prints, and a stepbatch command given the same data directory "
            "connects to it."))
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
    backup = commands.add_parser(
        "backup", help="copy the database into a directory, consistent while writers run",
        description=("Copy every collection and index of the database named by STEPBATCH_DB (at "
                     "MONGODB_URI, else the embedded server of --data-dir, which may be serving a "
                     "running validator) into DIR, as of one commit sequence number, with a manifest "
                     "holding that number, the counts and the state digest. DIR must be new or empty."))
    backup.add_argument("dir", metavar="DIR", help="directory to write the backup into")
    backup.add_argument("--data-dir", default=None, metavar="DIR",
                        help="embedded server data directory (default: $STEPBATCH_DATA_DIR/db)")
    backup.add_argument("--db", default=None, help="database name (default: $STEPBATCH_DB or step)")
    backup.set_defaults(func=run_backup)
    restore = commands.add_parser(
        "restore", help="rebuild a database from a backup, then replay archived batches",
        description=("Rebuild the database from a backup written by `stepbatch db backup` and check "
                     "that its state digest is the backup's; a database holding anything is refused "
                     "without --force. With --archive, the batches a service archived after the "
                     "backup's commit sequence number (`stepbatch serve --archive`) are then "
                     "finalized again, in order, with their own batch ids and times."))
    restore.add_argument("dir", metavar="DIR", help="the backup's directory")
    restore.add_argument("--force", action="store_true", help="replace a database that is not empty")
    restore.add_argument("--archive", default=None, metavar="DIR",
                         help="replay the batches archived here after the backup's sequence number")
    restore.add_argument("--data-dir", default=None, metavar="DIR",
                         help="embedded server data directory (default: $STEPBATCH_DATA_DIR/db)")
    restore.add_argument("--db", default=None, help="database name (default: $STEPBATCH_DB or step)")
    restore.set_defaults(func=run_restore)


def run_serve(args: argparse.Namespace) -> int:
    from stepbatch.config import Config
    from stepbatch.store.embedded import EmbeddedServer

    data_dir = args.data_dir or os.path.join(Config.from_env().data_dir, "db")
    server = EmbeddedServer(data_dir, port=args.port, attach=False)
    server.start()
    print(f"{server.description} serving {server.data_dir} (pid {server.pid}, log {server.log_path})")
    print(f"MONGODB_URI={server.uri}", flush=True)
    code = server.serve_forever()
    if code in (0, None):
        print(f"{server.description} stopped", flush=True)
        return 0
    reason = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    print(f"stepbatch db serve: {server.description} {reason}; its log: {server.log_path}", file=sys.stderr)
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


def run_backup(args: argparse.Namespace) -> int:
    from stepbatch.store.backup import backup

    with _database(args) as (db, _config, _uri):
        report = backup(db, args.dir)
    print(f"backed up database {report.database} at commit sequence {report.seq:,} into {report.directory}: "
          f"{_counts(report.counts)}; {report.bytes / 2**20:,.1f} MiB in {report.seconds:.1f} s; "
          f"state digest {report.state_digest}")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from stepbatch.store.archive import replay_archive
    from stepbatch.store.backup import read_manifest, restore

    read_manifest(args.dir)
    with _database(args) as (db, config, uri):
        report = restore(db, args.dir, force=args.force)
        print(f"restored database {report.database} at commit sequence {report.seq:,} in "
              f"{report.seconds:.1f} s: {_counts(report.counts)}; state digest {report.state_digest}")
        if args.archive:
            from stepbatch.store.mongo import MongoStore
            from stepbatch.store.statedigest import state_digest
            from stepbatch.validator import Validator

            with MongoStore(uri, db.name, config=config) as store, \
                    Validator(store, config) as validator:
                replayed = replay_archive(validator, args.archive, report.seq)
                digest = state_digest(store.db)
            print(f"replayed {replayed.batches:,} archived batches ({replayed.rows:,} proofs; "
                  f"{replayed.skipped:,} were in the backup already) in {replayed.seconds:.1f} s; "
                  f"state digest {digest}")
    return 0


@contextlib.contextmanager
def _database(args: argparse.Namespace):
    """(database, config, uri) the command names: at MONGODB_URI, else on the embedded server of
    --data-dir (the one already serving it, when one is)."""
    import pymongo

    from stepbatch.config import Config
    from stepbatch.store.embedded import EmbeddedServer

    config = Config.from_env(mongodb_uri=args.mongodb_uri, db_name=args.db)
    server = None
    if config.mongodb_uri is None:
        server = EmbeddedServer(args.data_dir or os.path.join(config.data_dir, "db")).start()
    uri = config.mongodb_uri or server.uri
    try:
        with pymongo.MongoClient(uri, tz_aware=True) as client:
            yield client[config.db_name], config, uri
    finally:
        if server is not None:
            server.close()


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counts.items() if n)


_port = int_in_range("a port", 0, 65535)
