"""`stepbatch serve`: the validator as an HTTP service (SPEC §7)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from stepbatch.cli import UsageError, int_in_range


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the STEP API over HTTP, micro-batching the proofs it receives",
        description=(
            "Serve the original STEP server's routes (POST /proof/submit, the /mesh routes, "
            "/proof/config, /health) and stepbatch's own (POST /proofs, /account/…, /metrics, "
            "/ready). Submitted proofs join the open batch, which closes at --batch-size proofs or "
            "after --max-wait-ms, is validated and committed in one transaction; each request is "
            "answered when its batch is committed. SIGTERM or Ctrl-C stops accepting, answers "
            "every accepted request and commits the open batch before exiting. Uses the embedded "
            "database unless --mongodb-uri / MONGODB_URI is given."))
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--chain", default=None, metavar="RPC_URL",
                        help="a gateway in front of a CometBFT node running `stepbatch abci`: batches become "
                             "ProofBatch transactions broadcast to RPC_URL, each proof is answered (with its "
                             "block's height) once its block is committed, and reads come from the node's "
                             "committed state: give its database with --db and --mongodb-uri")
    parser.add_argument("--port", type=_port, default=5500, help="TCP port (5500, the original's; 0: a free one)")
    parser.add_argument("--batch-size", type=_positive, default=1000, help="proofs per batch at most (1000)")
    parser.add_argument("--max-wait-ms", type=_wait, default=50.0,
                        help="longest a proof waits for its batch to close, in ms (50)")
    parser.add_argument("--queue-limit", type=_positive, default=20_000,
                        help="proofs waiting for a batch before requests are refused with 503 (20000)")
    parser.add_argument("--max-body-bytes", type=_positive, default=64 * 1024,
                        help="largest body of POST /proof/submit (65536)")
    parser.add_argument("--max-bulk-bytes", type=_positive, default=16 * 1024 * 1024,
                        help="largest body of POST /proofs (16777216)")
    parser.add_argument("--max-bulk-rows", type=_positive, default=10_000,
                        help="most proofs in one POST /proofs, whatever its format (10000)")
    parser.add_argument("--rate-ip", type=_rate, default=None, metavar="R[/BURST]",
                        help="requests per second per client address, on the submit and the read routes, "
                             "e.g. 20/40 (default: no limit; behind a proxy, see --forwarded-allow-ips)")
    parser.add_argument("--rate-account", type=_rate, default=None, metavar="R[/BURST]",
                        help="proofs per second per account on /proof/submit, charged only for proofs "
                             "whose signature recovers to the account (default: no limit)")
    parser.add_argument("--forwarded-allow-ips", default="", metavar="ADDRESSES",
                        help="comma-separated proxy addresses (or networks, or *) whose X-Forwarded-For "
                             "and X-Forwarded-Proto are believed (default: none; the client is the peer)")
    parser.add_argument("--max-connections", type=_positive, default=1000,
                        help="open connections in all; past it a connection is answered 503 and closed (1000)")
    parser.add_argument("--max-connections-per-ip", type=_positive, default=100,
                        help="open connections from one client address (100)")
    parser.add_argument("--header-timeout", type=_seconds, default=10.0, metavar="S",
                        help="seconds a client has to send a request's line and headers (10)")
    parser.add_argument("--body-timeout", type=_seconds, default=30.0, metavar="S",
                        help="seconds a client has to send a request's body after its headers (30)")
    parser.add_argument("--keep-alive", type=_seconds, default=5.0, metavar="S",
                        help="seconds an idle keep-alive connection stays open (5)")
    parser.add_argument("--read-timeout", type=_seconds, default=5.0, metavar="S",
                        help="seconds a read route (/mesh, /account) may work before it answers 503 (5)")
    parser.add_argument("--cors-origins", default="*", metavar="ORIGINS",
                        help="comma-separated web origins that may call the API from a browser; * any "
                             "(no credentials are used), an empty string none (*)")
    parser.add_argument("--db", default=None, help="database name (default: $STEPBATCH_DB or step)")
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                        help="info logs one JSON line per batch and per request (default: $LOG_LEVEL, "
                             "else info; LOG_FORMAT=json|text chooses the lines' form)")
    parser.add_argument("--archive", default=None, metavar="DIR",
                        help="archive every committed batch in DIR, before its requests are answered, "
                             "for `stepbatch db restore --archive` (put it on another disk than the database)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stepbatch import logs
    from stepbatch.config import Config
    from stepbatch.service import server
    from stepbatch.service.app import ServiceOptions, create_app
    from stepbatch.store.mongo import MongoStore
    from stepbatch.validator import Validator

    try:
        logs.configure(level=args.log_level)
    except ValueError as err:
        raise UsageError(str(err)) from err
    args.log_level = logging.getLevelName(logging.getLogger("stepbatch").level).lower()
    config = Config.from_env(mongodb_uri=args.mongodb_uri, db_name=args.db)
    options = ServiceOptions(
        batch_size=args.batch_size, max_wait_ms=args.max_wait_ms, queue_limit=args.queue_limit,
        max_body_bytes=args.max_body_bytes, max_bulk_bytes=args.max_bulk_bytes, max_bulk_rows=args.max_bulk_rows,
        read_timeout_s=args.read_timeout, cors_origins=tuple(_list(args.cors_origins)),
        ip_rate=args.rate_ip[0] if args.rate_ip else None, ip_burst=args.rate_ip[1] if args.rate_ip else None,
        account_rate=args.rate_account[0] if args.rate_account else None,
        account_burst=args.rate_account[1] if args.rate_account else None, archive_dir=args.archive,
        chain_rpc=args.chain)
    if args.chain and args.archive:
        raise UsageError("--archive keeps the batches this service commits; behind --chain the chain keeps them")
    limits = server.ConnectionLimits(
        header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout, keep_alive_s=args.keep_alive,
        max_connections=args.max_connections, max_connections_per_ip=args.max_connections_per_ip)
    try:
        listener = socket.create_server((args.host, args.port), reuse_port=False)
    except OSError as err:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from err
    store = MongoStore(config.mongodb_uri, config.db_name, config=config)
    try:
        with Validator(store, config) as validator:
            app = create_app(validator, options)
            host, port = listener.getsockname()[:2]
            print(f"stepbatch serve: listening on http://{host}:{port} (database {config.db_name}, "
                  f"batches of up to {options.batch_size} proofs or {options.max_wait_ms:g} ms"
                  + (f", a gateway to {args.chain}" if args.chain else "") + ")", flush=True)
            server.run(app, listener, args.log_level, limits, _list(args.forwarded_allow_ips))
    finally:
        listener.close()
        store.close()
    print("stepbatch serve: stopped; every accepted request was answered", file=sys.stderr, flush=True)
    return 0


_port = int_in_range("a port", 0, 65535)
_positive = int_in_range("a positive integer", 1, 2 ** 31 - 1)


def _wait(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-wait-ms is a number of milliseconds, got {text!r}") from None
    if not 0 <= value <= 60_000:
        raise argparse.ArgumentTypeError(f"--max-wait-ms must be in [0, 60000], got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a time is a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"a time must be in (0, 3600] seconds, got {text!r}")
    return value


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _rate(text: str) -> tuple[float, float | None]:
    rate, _, burst = text.partition("/")
    try:
        values = float(rate), (float(burst) if burst else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a rate is R or R/BURST in requests per second, got {text!r}") from None
    if not values[0] > 0 or (values[1] is not None and not values[1] >= 1):
        raise argparse.ArgumentTypeError(f"a rate must be positive and a burst at least 1, got {text!r}")
    return values
