"""`stepbatch serve`: the STEP API (SPEC §7) as an ASGI application on Starlette.

Proofs go through one `LiveBatcher` (one transaction per batch, each request answered when its
batch is committed); the read routes are in `stepbatch.service.reads`. What is refused before it
reaches a batch (a body too large, JSON that does not parse, a client over its rate, a full queue)
is answered at once and never touches the batch it would have joined.

Every cost is bounded before it is paid: a client over its rate or a full queue is refused before
its body is read; a bulk body is read only while the bytes of bulk bodies being read and parsed
stay within their budget, then parsed on threads of its own by `stepbatch.ingest.untrusted` (depth
and rows checked before any parser sees it). An account's rate is charged only for a proof whose
signature recovers to that account, so nobody can spend it for someone else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import re

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
import pymongo
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from stepbatch import crypto, logs
from stepbatch.batching import BatchPolicy
from stepbatch.ingest import ndjson
from stepbatch.ingest.sources import ProofSourceError
from stepbatch.ingest.untrusted import ARROW_STREAM, RowLimitExceeded, read_untrusted
from stepbatch.mesh import keys as mesh_keys
from stepbatch.mesh.ids import key_of
from stepbatch.protocol import Code
from stepbatch.schema import PROOF_COLUMNS, VERDICT_SCHEMA
from stepbatch.service import reads, web
from stepbatch.service.batcher import LiveBatcher, Overloaded, ShuttingDown
from stepbatch.service.guard import CorsPolicy, Guard, http_error
from stepbatch.service.limits import ReadGate, TokenBuckets, retry_after
from stepbatch.service.metrics import ServiceMetrics
from stepbatch.service.responses import JSON, STATUS_BY_CODE, iso_ms, proof_error, step_amount
from stepbatch.store.archive import BatchArchive
from stepbatch.store.base import StoreError
from stepbatch.validator import Validator

log = logging.getLogger("stepbatch.service")
NDJSON = "application/x-ndjson"
_ROW_PREFIX = re.compile(r"^row [0-9]+: ")


@dataclasses.dataclass(frozen=True)
class ServiceOptions:
    batch_size: int = 1000
    max_wait_ms: float = 50.0
    queue_limit: int = 20_000  # proofs waiting for a batch before requests get 503
    max_body_bytes: int = 64 * 1024  # one proof is ~0.5 KB
    max_bulk_bytes: int = 16 * 1024 * 1024
    max_bulk_rows: int = 10_000  # proofs in one POST /proofs (an Arrow batch may declare any length)
    parsing_bytes: int = 64 * 1024 * 1024  # bulk bodies being read and parsed at once, in bytes
    ip_rate: float | None = None  # requests per second per client address; None: no limit
    ip_burst: float | None = None
    account_rate: float | None = None  # proofs per second per account; None: no limit
    account_burst: float | None = None
    read_timeout_s: float = 5.0  # the longest a read route may work, its database calls included
    read_threads: int = 4
    cors_origins: tuple[str, ...] = ("*",)
    archive_dir: str | None = None  # every committed batch archived here (stepbatch.store.archive)
    chain_rpc: str | None = None  # a gateway: batches go to this CometBFT node (stepbatch.service.chain)


class Service:
    """What the routes share: the store, the validator, the batcher, the limits and the metrics."""

    def __init__(self, validator: Validator, options: ServiceOptions):
        self.validator = validator
        self.store = validator.store
        self.db = validator.store.db
        self.options = options
        self.metrics = ServiceMetrics()
        archive = BatchArchive(options.archive_dir) if options.archive_dir else None
        make_pipeline = None
        if options.chain_rpc:
            from stepbatch.service.chain import ChainPipeline
            make_pipeline = functools.partial(ChainPipeline, options.chain_rpc)
        self.batcher = LiveBatcher(validator, BatchPolicy.of(options.batch_size, options.max_wait_ms),
                                   options.queue_limit, self.metrics, archive=archive, make_pipeline=make_pipeline)
        self.ip_limit = TokenBuckets(options.ip_rate, options.ip_burst) if options.ip_rate else None
        self.account_limit = TokenBuckets(options.account_rate, options.account_burst) if options.account_rate else None
        self.reads = ReadGate(options.read_threads)
        # Bulk bodies are parsed here, never on the threads the batcher validates and commits on.
        self.parsing = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="stepbatch-parse")
        self.parsing_bytes = 0  # reserved by bulk bodies being read or parsed
        self.max_batch_rows = max(options.batch_size, options.max_bulk_rows)
        self.ready = False

    def close(self) -> None:
        self.reads.close()
        self.parsing.shutdown(wait=True, cancel_futures=True)


def create_app(validator: Validator, options: ServiceOptions | None = None) -> Starlette:
    service = Service(validator, options or ServiceOptions())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.batcher.start()
        service.ready = True
        try:
            yield
        finally:
            service.ready = False
            await service.batcher.stop()
            service.close()

    app = Starlette(routes=[
        Route("/proof/submit", submit, methods=["POST"]), Route("/proofs", submit_many, methods=["POST"]),
        Route("/proof/config", proof_config), Route("/health", health), Route("/ready", ready),
        Route("/metrics", metrics), *reads.ROUTES, *web.ROUTES,
    ], lifespan=lifespan, exception_handlers={HTTPException: http_error},
        middleware=[Middleware(Guard, cors=CorsPolicy(tuple(service.options.cors_origins)))])
    app.state.service = service
    return app


class _Refused(Exception):
    def __init__(self, response: Response, reason: str):
        self.response, self.reason = response, reason


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_large = proof_error(Code.INVALID_PAYLOAD.name, f"request body is larger than {limit:,} bytes", 413)
    if declared and declared.isdigit() and int(declared) > limit:
        raise _Refused(too_large, "too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refused(too_large, "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _limit(buckets: TokenBuckets | None, key: str, what: str) -> None:
    if buckets is None:
        return
    wait = buckets.take(key)
    if wait > 0:
        raise _Refused(proof_error("RATE_LIMITED", f"too many requests for this {what}; retry in {wait:.1f} s",
                                   429, {"Retry-After": retry_after(wait)}), "rate_limited")


def _queued(service: Service, rows) -> asyncio.Future:
    try:
        return service.batcher.submit(rows)
    except Overloaded as err:
        raise _Refused(proof_error("OVERLOADED", f"the validator is at capacity ({err}); retry shortly", 503,
                                   {"Retry-After": "1"}), "overloaded") from None
    except ShuttingDown as err:
        raise _Refused(proof_error("SHUTTING_DOWN", str(err), 503, {"Retry-After": "5"}), "shutting_down") from None


def _refusals(handler):
    async def run(request: Request) -> Response:
        service: Service = request.app.state.service
        try:
            return await handler(request, service)
        except _Refused as refused:
            service.metrics.refused.labels(reason=refused.reason).inc()
            return refused.response
        except (StoreError, pymongo.errors.PyMongoError):
            # What failed (addresses, timeouts, topology) is in the batcher's log line, not the answer.
            return proof_error("INTERNAL", "the batch could not be committed; retry shortly", 500)
    run.__name__ = handler.__name__
    return run


@_refusals
async def submit(request: Request, service: Service) -> Response:
    """POST /proof/submit: one proof in the API shape; answered when its batch is committed."""
    arrived = dt.datetime.now(dt.timezone.utc)
    request_id = logs.request_id(request.headers.get("x-request-id"))
    client = request.client.host if request.client else "unknown"
    _limit(service.ip_limit, client, "client address")
    _queue_room(service)
    body = await _body(request, service.options.max_body_bytes)
    try:
        if ndjson.too_deep(body):
            raise orjson.JSONDecodeError(f"nested deeper than {ndjson.MAX_DEPTH} levels", "", 0)
        document = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise _Refused(proof_error(Code.INVALID_PAYLOAD.name, f"request body is not valid JSON: {err}", 400),
                       "bad_json") from None
    if not isinstance(document, dict):
        raise _Refused(proof_error(Code.INVALID_PAYLOAD.name, 'expected a JSON object {"payload": {...}, '
                                   '"signature": "0x…"}', 400), "bad_json")
    signer = _signer(document) if service.account_limit is not None else None
    if signer is not None:
        _limit(service.account_limit, signer, "account")
    # CLOCK_DRIFT is measured against the time the request arrived, never a time the client sends.
    document["received_at"] = iso_ms(arrived)
    answer = await _queued(service, [document])
    row = answer.verdicts.to_pylist()[0]
    logs.event(log, "proof", request_id=request_id, batch_id=answer.batch_id, account=row["account"],
               nonce=row["nonce"], code=row["code"])
    if row["code"] != Code.ACCEPTED.name:
        return proof_error(row["code"], _ROW_PREFIX.sub("", row["message"]), STATUS_BY_CODE[row["code"]])
    triangle_id = row["triangle_id"]
    return JSON({
        "ok": True, "reward": step_amount(row["reward_micro"]), "unit": "STEP", "triangleId": triangle_id,
        "level": int(mesh_keys.key_levels([key_of(triangle_id)])[0]), "clicks": row["click_number"],
        "balance": step_amount(int(answer.balance_micro[0])), "processedAt": iso_ms(answer.committed_at),
        **({} if answer.height is None else {"height": int(answer.height[0])}),
    })


def _signer(document: dict) -> str | None:
    """The proof's account, lower case, when its signature recovers to it; else None (a proof that
    is not signed by the account it names must not spend that account's rate)."""
    payload = document.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("account"), str) \
            or not isinstance(document.get("signature"), str):
        return None
    try:
        signer = crypto.recover_address(crypto.canonical_message(payload), document["signature"])
    except Exception:  # any field that cannot make the message or the signature: not signed
        return None
    return signer if signer == payload["account"].lower() else None


def _queue_room(service: Service) -> None:
    if service.batcher.depth >= service.batcher.queue_limit:
        raise _Refused(proof_error("OVERLOADED", f"the validator is at capacity ({service.batcher.depth:,} proofs "
                                   f"are waiting); retry shortly", 503, {"Retry-After": "1"}), "overloaded")


@contextlib.contextmanager
def _parsing_budget(service: Service, request: Request):
    """Reserve the bytes a bulk body may take (its declared length, else the limit) for as long as
    it is read and parsed; refuse the request when the reservation does not fit."""
    declared = request.headers.get("content-length", "")
    limit = service.options.max_bulk_bytes
    size = min(int(declared), limit) if declared.isdigit() and len(declared) < 19 else limit
    if service.parsing_bytes and service.parsing_bytes + size > service.options.parsing_bytes:
        raise _Refused(proof_error("OVERLOADED", "too many large requests are being read; retry shortly", 503,
                                   {"Retry-After": "1"}), "overloaded")
    service.parsing_bytes += size
    try:
        yield
    finally:
        service.parsing_bytes -= size


@_refusals
async def submit_many(request: Request, service: Service) -> Response:
    """POST /proofs: a JSON array, NDJSON or an Arrow IPC stream of proofs; one verdict per row, in
    order, as NDJSON (or an Arrow IPC stream when the Accept header asks for one)."""
    arrived = dt.datetime.now(dt.timezone.utc)
    request_id = logs.request_id(request.headers.get("x-request-id"))
    client = request.client.host if request.client else "unknown"
    _limit(service.ip_limit, client, "client address")
    _queue_room(service)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    max_rows = min(service.options.max_bulk_rows, service.batcher.queue_limit)
    with _parsing_budget(service, request):
        body = await _body(request, service.options.max_bulk_bytes)
        try:
            rows = await asyncio.get_running_loop().run_in_executor(
                service.parsing, _bulk_rows, body, kind, arrived, max_rows)
        except RowLimitExceeded as err:
            raise _Refused(proof_error(Code.INVALID_PAYLOAD.name, str(err), 413), "too_many_rows") from None
        except ProofSourceError as err:
            raise _Refused(proof_error(Code.INVALID_PAYLOAD.name, f"cannot read the proofs: {err}", 400),
                           "bad_json") from None
        del body
    if rows.num_rows == 0:
        verdicts = VERDICT_SCHEMA.empty_table()
    else:
        answer = await _queued(service, rows)
        verdicts = answer.verdicts
        logs.event(log, "proofs", request_id=request_id, batch_id=answer.batch_id, rows=verdicts.num_rows)
    if ARROW_STREAM in request.headers.get("accept", ""):
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, verdicts.schema) as writer:
            writer.write_table(verdicts)
        return Response(sink.getvalue().to_pybytes(), media_type=ARROW_STREAM)
    lines = b"".join(orjson.dumps(row) + b"\n" for row in verdicts.to_pylist())
    return Response(lines, media_type=NDJSON)


def _bulk_rows(body: bytes, kind: str, arrived: dt.datetime, max_rows: int) -> pa.Table:
    rows = read_untrusted(body, kind, max_rows)
    stamp = pa.array([arrived] * rows.num_rows, pa.timestamp("ms", tz="UTC"))
    return rows.select(PROOF_COLUMNS).set_column(PROOF_COLUMNS.index("received_at"), "received_at", stamp)


async def proof_config(request: Request) -> Response:
    config = request.app.state.service.validator.config
    return JSON({
        "gpsMaxAccuracyM": config.gps_max_accuracy_m, "clockDriftMs": config.clock_drift_ms,
        "speedLimitMps": config.speed_limit_mps, "moratoriumMs": config.moratorium_ms,
        "subdivideAtClicks": config.subdivide_at_clicks, "proofVersion": "STEP-PROOF-v1",
    })


def _database_ok(service: Service) -> tuple[bool, str | None]:
    try:
        with pymongo.timeout(2.0):
            service.db.client.admin.command("ping")
        return True, None
    except Exception as err:  # any failure to reach it is the answer; what failed goes to the log
        log.warning("the database did not answer a ping: %s", err)
        return False, "the database did not answer a ping"


def health(request: Request) -> Response:
    service: Service = request.app.state.service
    ok, error = _database_ok(service)
    return JSON({"ok": ok and service.ready, "database": {"reachable": ok, "error": error},
                 "queueDepth": service.batcher.depth, "lastBatch": service.batcher.last_batch,
                 "ready": service.ready}, 200 if ok else 503)


def ready(request: Request) -> Response:
    service: Service = request.app.state.service
    ok = service.ready and _database_ok(service)[0]
    return PlainTextResponse("ready\n" if ok else "not ready\n", 200 if ok else 503)


def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
