"""`stepbatch serve`: the STEP API (SPEC §7) as an ASGI application on Starlette.

Proofs go through one `LiveBatcher` (one transaction per batch, each request answered when its
batch is committed); the read routes are in `stepbatch.service.reads`. What is refused before it
reaches a batch (a body too large, JSON that does not parse, a client over its rate, a full queue)
is answered at once and never touches the batch it would have joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import logging
import re

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from stepbatch.batching import BatchPolicy
from stepbatch.ingest.sources import ProofSourceError, read_proofs
from stepbatch.mesh import keys as mesh_keys
from stepbatch.mesh.ids import key_of
from stepbatch.protocol import Code
from stepbatch.schema import PROOF_COLUMNS, VERDICT_SCHEMA
from stepbatch.service import reads, web
from stepbatch.service.batcher import LiveBatcher, Overloaded, ShuttingDown
from stepbatch.service.limits import TokenBuckets, retry_after
from stepbatch.service.metrics import ServiceMetrics
from stepbatch.service.responses import JSON, STATUS_BY_CODE, iso_ms, proof_error, step_amount
from stepbatch.store.base import StoreError, brief
from stepbatch.validator import Validator

log = logging.getLogger("stepbatch.service")
ARROW_STREAM = "application/vnd.apache.arrow.stream"
NDJSON = "application/x-ndjson"
_ROW_PREFIX = re.compile(r"^row [0-9]+: ")


@dataclasses.dataclass(frozen=True)
class ServiceOptions:
    batch_size: int = 1000
    max_wait_ms: float = 50.0
    queue_limit: int = 20_000  # proofs waiting for a batch before requests get 503
    max_body_bytes: int = 64 * 1024  # one proof is ~0.5 KB
    max_bulk_bytes: int = 64 * 1024 * 1024
    ip_rate: float | None = None  # requests per second per client address; None: no limit
    ip_burst: float | None = None
    account_rate: float | None = None  # proofs per second per account; None: no limit
    account_burst: float | None = None


class Service:
    """What the routes share: the store, the validator, the batcher, the limits and the metrics."""

    def __init__(self, validator: Validator, options: ServiceOptions):
        self.validator = validator
        self.store = validator.store
        self.db = validator.store.db
        self.options = options
        self.metrics = ServiceMetrics()
        self.batcher = LiveBatcher(validator, BatchPolicy.of(options.batch_size, options.max_wait_ms),
                                   options.queue_limit, self.metrics)
        self.ip_limit = TokenBuckets(options.ip_rate, options.ip_burst) if options.ip_rate else None
        self.account_limit = TokenBuckets(options.account_rate, options.account_burst) if options.account_rate else None
        self.ready = False


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

    app = Starlette(routes=[
        Route("/proof/submit", submit, methods=["POST"]), Route("/proofs", submit_many, methods=["POST"]),
        Route("/proof/config", proof_config), Route("/health", health), Route("/ready", ready),
        Route("/metrics", metrics), *reads.ROUTES, *web.ROUTES,
    ], lifespan=lifespan, exception_handlers={Exception: _internal_error})
    app.state.service = service
    return app


async def _internal_error(request: Request, err: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=err)
    return proof_error("INTERNAL", f"internal error: {brief(err)}", 500)


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
        except StoreError as err:
            return proof_error("INTERNAL", f"the batch could not be committed: {brief(err)}", 500)
    run.__name__ = handler.__name__
    return run


@_refusals
async def submit(request: Request, service: Service) -> Response:
    """POST /proof/submit: one proof in the API shape; answered when its batch is committed."""
    arrived = dt.datetime.now(dt.timezone.utc)
    client = request.client.host if request.client else "unknown"
    _limit(service.ip_limit, client, "client address")
    body = await _body(request, service.options.max_body_bytes)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise _Refused(proof_error(Code.INVALID_PAYLOAD.name, f"request body is not valid JSON: {err}", 400),
                       "bad_json") from None
    if not isinstance(document, dict):
        raise _Refused(proof_error(Code.INVALID_PAYLOAD.name, 'expected a JSON object {"payload": {...}, '
                                   '"signature": "0x…"}', 400), "bad_json")
    payload = document.get("payload")
    account = payload.get("account") if isinstance(payload, dict) else None
    if isinstance(account, str):
        _limit(service.account_limit, account.lower(), "account")
    # CLOCK_DRIFT is measured against the time the request arrived, never a time the client sends.
    document["received_at"] = iso_ms(arrived)
    answer = await _queued(service, [document])
    row = answer.verdicts.to_pylist()[0]
    if row["code"] != Code.ACCEPTED.name:
        return proof_error(row["code"], _ROW_PREFIX.sub("", row["message"]), STATUS_BY_CODE[row["code"]])
    triangle_id = row["triangle_id"]
    return JSON({
        "ok": True, "reward": step_amount(row["reward_micro"]), "unit": "STEP", "triangleId": triangle_id,
        "level": int(mesh_keys.key_levels([key_of(triangle_id)])[0]), "clicks": row["click_number"],
        "balance": step_amount(int(answer.balance_micro[0])), "processedAt": iso_ms(answer.committed_at),
    })


@_refusals
async def submit_many(request: Request, service: Service) -> Response:
    """POST /proofs: a JSON array, NDJSON or an Arrow IPC stream of proofs; one verdict per row, in
    order, as NDJSON (or an Arrow IPC stream when the Accept header asks for one)."""
    arrived = dt.datetime.now(dt.timezone.utc)
    client = request.client.host if request.client else "unknown"
    _limit(service.ip_limit, client, "client address")
    body = await _body(request, service.options.max_bulk_bytes)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        rows = await asyncio.to_thread(_bulk_rows, body, kind, arrived)
    except (ProofSourceError, pa.ArrowInvalid, orjson.JSONDecodeError, ValueError) as err:
        raise _Refused(proof_error(Code.INVALID_PAYLOAD.name, f"cannot read the proofs: {brief(err)}", 400),
                       "bad_json") from None
    if rows.num_rows == 0:
        verdicts = VERDICT_SCHEMA.empty_table()
    else:
        verdicts = (await _queued(service, rows)).verdicts
    if ARROW_STREAM in request.headers.get("accept", ""):
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, verdicts.schema) as writer:
            writer.write_table(verdicts)
        return Response(sink.getvalue().to_pybytes(), media_type=ARROW_STREAM)
    lines = b"".join(orjson.dumps(row) + b"\n" for row in verdicts.to_pylist())
    return Response(lines, media_type=NDJSON)


def _bulk_rows(body: bytes, kind: str, arrived: dt.datetime) -> pa.Table:
    if kind == ARROW_STREAM or body[:4] == b"\xff\xff\xff\xff":
        table = ipc.open_stream(io.BytesIO(body)).read_all()
        rows = read_proofs(table)
    else:
        rows = read_proofs(body if body.strip() else [])
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
        service.db.client.admin.command("ping")
        return True, None
    except Exception as err:  # any failure to reach it is the answer
        return False, brief(err)


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
