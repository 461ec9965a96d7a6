"""`stepbatch serve` under attack (issue 28): each finding an attack on a real process over loopback,
answered clearly while every other client is still served."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import struct
import uuid
from urllib.parse import quote

import httpx
import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
import pymongo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepbatch import mesh, read_proofs
from stepbatch.crypto import signing
from stepbatch.store.mongo import MongoStore
from tests.processes import server_process, wait_until
from tests.strategies import ACCOUNT_KEYS, WORLD_CENTRE
from tests.test_service import LEVEL, REGION, proof

pytestmark = pytest.mark.mongo

ARROW = "application/vnd.apache.arrow.stream"
MAX_ROWS = 1000
PER_IP = 12
# One server for most attacks: small bounds so that each is reached cheaply.
# Each test that counts on a client address's rate talks from an address of its own (127.0.0.N).
IP_BURST = 300
SERVE_ARGS = ["--max-bulk-rows", str(MAX_ROWS), "--max-connections-per-ip", str(PER_IP), "--header-timeout", "1",
              "--body-timeout", "1", "--rate-account", "0.01/1", "--rate-ip", f"5/{IP_BURST}", "--max-wait-ms", "5"]


@contextlib.contextmanager
def running_service(mongo_uri: str, args: list[str]):
    """`stepbatch serve` on a database of its own with the test region declared; (server, client)."""
    name = f"stepbatch_attack_{uuid.uuid4().hex[:10]}"
    with MongoStore(mongo_uri, name) as store:
        store.declare(REGION)
    try:
        with server_process(["--mongodb-uri", mongo_uri, "serve", "--port", "0", "--db", name, *args]) as server:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                wait_until(lambda: client.get("/ready").status_code == 200, what="/ready")
                yield server, client
    finally:
        with pymongo.MongoClient(mongo_uri) as admin:
            admin.drop_database(name)


@pytest.fixture(scope="module")
def service(mongo_uri):
    with running_service(mongo_uri, SERVE_ARGS) as running:
        yield running


def arrow_stream(table: pa.Table, **options) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema, options=ipc.IpcWriteOptions(**options)) as writer:
        writer.write_table(table)
    return sink.getvalue()


def ndjson_verdicts(answer: httpx.Response) -> list[dict]:
    assert answer.status_code == 200, answer.text
    return [orjson.loads(line) for line in answer.content.splitlines()]


def refused(answer: httpx.Response, status: int, code: str) -> str:
    """The message of a refusal in the submit routes' envelope, after checking status and code."""
    body = answer.json()
    assert (answer.status_code, body["ok"], body["code"]) == (status, False, code), answer.text
    return body["message"]


def api_refused(answer: httpx.Response, status: int, code: str) -> str:
    body = answer.json()
    assert (answer.status_code, body["ok"], body["error"]["code"]) == (status, False, code), answer.text
    return body["error"]["message"]


def peak_rss_bytes(server) -> int:
    with open(f"/proc/{server.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM line")


def assert_serves_others(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/mesh/triangleAt", params={"lat": 1, "lon": 2, "level": 5}).status_code == 200


# ------------------------------------------------------------------------------ 1. crash

DEEP = b'{"a":' + b"[" * 10_000 + b"]" * 10_000 + b"}"


def test_json_nested_ten_thousand_deep_is_one_bad_row_not_a_crash(service):
    server, client = service
    for kind in ("application/json", "application/x-ndjson", "text/plain"):
        for body in (DEEP, DEEP + b"\n"):
            verdicts = ndjson_verdicts(client.post("/proofs", content=body, headers={"content-type": kind}))
            assert [(v["code"], v["message"]) for v in verdicts] == [
                ("INVALID_PAYLOAD", "line 1: not valid JSON here: nested deeper than 64 levels")]
    array = client.post("/proofs", content=b"[" + DEEP + b"]", headers={"content-type": "application/json"})
    assert refused(array, 400, "INVALID_PAYLOAD") == \
        "cannot read the proofs: not valid JSON here: nested deeper than 64 levels"
    single = client.post("/proof/submit", content=DEEP, headers={"content-type": "application/json"})
    assert refused(single, 400, "INVALID_PAYLOAD").startswith("request body is not valid JSON: nested deeper than 64")
    assert server.process.poll() is None
    assert_serves_others(client)


# ------------------------------------------------------------------------------ 2. unbounded reads

HOSTILE_READS = [
    ("/mesh/nearby", {"lat": 47.5, "lon": 19.04, "radius_m": 1_000_000, "level": 21}),
    ("/mesh/search", {"bbox": "-180,0,180,0.0001", "level": 21, "maxResults": 1}),
]


def test_reads_are_bounded_before_they_run_and_others_are_served_meanwhile(service):
    server, client = service
    nearby = client.get(*HOSTILE_READS[0][:1], params=HOSTILE_READS[0][1])
    assert api_refused(nearby, 400, "TOO_MANY_RESULTS") == \
        "more than 10000 level-21 triangles lie within 1e+06 m; use a smaller radius or level"
    search = client.get(HOSTILE_READS[1][0], params=HOSTILE_READS[1][1])
    assert api_refused(search, 400, "TOO_MANY_RESULTS") == \
        "the box's edges cross more than 200,000 level-21 triangles; use a smaller box or a lower level"
    account = signing.address_of(ACCOUNT_KEYS[3])
    cursor = client.get(f"/account/{account}/proofs", params={"limit": 1, "before": "999999999999999999:999999999"})
    assert api_refused(cursor, 400, "INVALID_PARAMS") == (
        "before is the `next` cursor of a previous page; its row index is below 1,000, "
        "got '999999999999999999:999999999'")

    async def attack_and_serve():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as session:
            attacks = [asyncio.create_task(session.get(path, params=params))
                       for _ in range(4) for path, params in HOSTILE_READS]
            served = [await session.get(path) for path in ("/health", "/ready", "/metrics", "/mesh/active")]
            return served, await asyncio.gather(*attacks)

    served, attacked = asyncio.run(attack_and_serve())
    assert [answer.status_code for answer in served] == [200, 200, 200, 200]
    assert {answer.status_code for answer in attacked} == {400}
    assert client.post("/proof/submit", json=proof(ACCOUNT_KEYS[3])).status_code == 200


def client_from(server, address: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address=address), timeout=60)


def test_read_routes_are_rate_limited_like_submits_and_proxies_are_not_believed(service):
    server, _client = service
    params = {"lat": 1, "lon": 2, "level": 5}
    with client_from(server, "127.0.0.9") as client:
        answers = [client.get("/mesh/triangleAt", params=params).status_code for _ in range(IP_BURST + 20)]
        assert answers[:IP_BURST - 10] == [200] * (IP_BURST - 10) and answers[-1] == 429
        limited = client.get("/mesh/triangleAt", params=params)
        assert api_refused(limited, 429, "RATE_LIMITED").startswith("too many requests for this client address")
        assert int(limited.headers["retry-after"]) >= 1
        # 8. A rotating X-Forwarded-For from loopback is not believed: it is the same client. Each try
        # comes right after a refusal, so the bucket's refill (5/s) has no time to let it through on a
        # slow machine; its proof names an account no other test uses.
        for k in range(3):
            body = proof(ACCOUNT_KEYS[3])
            for _ in range(IP_BURST + 50):
                if client.get("/mesh/triangleAt", params=params).status_code == 429:
                    break
            spoofed = client.post("/proof/submit", json=body, headers={"x-forwarded-for": f"203.0.113.{k}"})
            assert refused(spoofed, 429, "RATE_LIMITED").startswith("too many requests for this client address")
        assert client.get("/health").status_code == 200  # never rate limited: load balancers ask it


# ------------------------------------------------------------------------------ 3, 4, 10. bulk bodies

def test_an_arrow_stream_cannot_declare_more_rows_than_its_bytes_carry(service):
    server, client = service
    last_batch = client.get("/health").json()["lastBatch"]
    no_columns = arrow_stream(pa.table({"x": pa.nulls(1_000_000)}).drop_columns(["x"]))
    assert len(no_columns) == 144
    cases = {
        no_columns: "a record batch declares 1,000,000 rows; at most 1,000 proofs go in one request",
        arrow_stream(pa.table({"nonce": pa.nulls(3_000_000)})):
            "a record batch declares 3,000,000 rows; at most 1,000 proofs go in one request",
        arrow_stream(pa.Table.from_batches([pa.record_batch({"nonce": pa.nulls(600)})] * 2)):
            "the stream's record batches hold more than 1,000 rows; at most 1,000 proofs go in one request",
    }
    for body, message in cases.items():
        assert refused(client.post("/proofs", content=body, headers={"content-type": ARROW}), 413,
                       "INVALID_PAYLOAD") == message
    bomb = pa.DictionaryArray.from_arrays(pa.array([0] * 900, pa.int32()), pa.array(["x" * 100_000]))
    unreadable = {
        arrow_stream(pa.table({"nonce": bomb})): "column 'nonce': its dictionary decodes to more than",
        arrow_stream(pa.table({"nonce": pa.array(["n"] * 10)}), compression="zstd"):
            "compressed Arrow IPC bodies are not accepted; send the stream uncompressed",
        arrow_stream(pa.table({"nonce": pa.RunEndEncodedArray.from_arrays(pa.array([900], pa.int32()), ["x"])})):
            "column 'nonce': an Arrow run_end_encoded<run_ends: int32, values: string> column cannot hold",
    }
    for body, message in unreadable.items():
        answer = client.post("/proofs", content=body, headers={"content-type": ARROW})
        assert refused(answer, 400, "INVALID_PAYLOAD").startswith(f"cannot read the proofs: {message}")
    assert client.get("/health").json()["lastBatch"] == last_batch  # nothing was committed
    assert server.process.poll() is None


def test_a_truncated_or_corrupt_arrow_stream_is_a_400(service):
    _server, client = service
    whole = arrow_stream(read_proofs([proof(ACCOUNT_KEYS[0])]).drop_columns(["payload_error"]))
    cases = [
        (whole[:len(whole) // 2], "cannot read the proofs: not a readable Arrow IPC stream: a message at byte"),
        (whole[:-9], "cannot read the proofs: not a readable Arrow IPC stream: a message declares a body of"),
        (b"\xff\xff\xff\xff" + struct.pack("<i", -8) + b"\x00" * 64,
         "cannot read the proofs: not a readable Arrow IPC stream: a message at byte 4 declares -8 bytes"),
        (b"\xff\xff\xff\xff" + struct.pack("<i", 16) + b"\xab" * 24,
         "cannot read the proofs: not a readable Arrow IPC stream: its message metadata is corrupt"),
    ]
    for body, message in cases:
        answer = client.post("/proofs", content=body, headers={"content-type": ARROW})
        assert refused(answer, 400, "INVALID_PAYLOAD").startswith(message)


def test_json_rows_and_bytes_are_bounded_before_parsing(service):
    server, client = service
    rows = b"[" + b",".join([b"{}"] * (MAX_ROWS + 1)) + b"]"
    assert refused(client.post("/proofs", content=rows, headers={"content-type": "application/json"}), 413,
                   "INVALID_PAYLOAD") == "the array holds 1,001 proofs; at most 1,000 go in one request"
    lines = b"{}\n" * (MAX_ROWS + 1)
    assert refused(client.post("/proofs", content=lines, headers={"content-type": "application/x-ndjson"}), 413,
                   "INVALID_PAYLOAD") == "the body holds 1,001 lines; at most 1,000 proofs go in one request"
    too_big = client.post("/proofs", content=b" " * (16 * 1024 * 1024 + 1), headers={"content-type": "application/json"})
    assert refused(too_big, 413, "INVALID_PAYLOAD") == "request body is larger than 16,777,216 bytes"
    # The largest body allowed, of long junk rows: answered row by row within bounded memory.
    junk = [{"payload": {"account": "0x" + "a" * 40, "nonce": "n" * 15_000}} for _ in range(MAX_ROWS)]
    verdicts = ndjson_verdicts(client.post("/proofs", content=orjson.dumps(junk),
                                           headers={"content-type": "application/json"}))
    assert len(verdicts) == MAX_ROWS and {v["code"] for v in verdicts} == {"INVALID_PAYLOAD"}
    assert peak_rss_bytes(server) < 2 * 1024 ** 3


# ------------------------------------------------------------------------------ 5. connections

def _raw(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_idle_and_slow_connections_are_capped_and_timed_out(service):
    server, _client = service
    port = int(server.url.rsplit(":", 1)[1])
    idle = [_raw(port) for _ in range(PER_IP + 8)]
    try:
        answers = [_read_all(sock) for sock in idle]
        refusals = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        timeouts = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
        assert len(refusals) >= 8 and len(refusals) + len(timeouts) == len(idle)
        assert b'"code":"TOO_MANY_CONNECTIONS"' in refusals[0] and b"retry-after: 1" in refusals[0]
        assert b'"code":"REQUEST_TIMEOUT"' in timeouts[0]
    finally:
        for sock in idle:
            sock.close()

    slow_headers = _raw(port)
    slow_body = _raw(port)
    try:
        slow_headers.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        slow_body.sendall(b"POST /proofs HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        assert b"the request's headers did not arrive within 1 s" in _read_all(slow_headers)
        assert b"the request's body did not arrive within 1 s" in _read_all(slow_body)
    finally:
        slow_headers.close()
        slow_body.close()

    # While another address holds every connection it may, this one is served.
    hogs = [_raw(port) for _ in range(PER_IP)]
    try:
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(base_url=server.url.replace("localhost", "127.0.0.1"), transport=transport,
                          timeout=30) as other:
            assert other.get("/health").status_code == 200
    finally:
        for sock in hogs:
            sock.close()


# ------------------------------------------------------------------------------ 6, 7. other accounts

def test_unsigned_proofs_neither_spend_an_account_rate_nor_enter_its_history(service):
    _server, client = service
    victim = ACCOUNT_KEYS[1]
    address = signing.address_of(victim)
    for _ in range(3):
        forged = proof(victim, signer=ACCOUNT_KEYS[2])
        assert refused(client.post("/proof/submit", json=forged), 401, "BAD_SIGNATURE")
    assert client.post("/proof/submit", json=proof(victim)).status_code == 200

    garbage = [proof(victim, nonce="attacker text", signer=ACCOUNT_KEYS[2]),
               {"payload": {"account": address, "nonce": "x" * 500}}]
    verdicts = ndjson_verdicts(client.post("/proofs", json=garbage))
    assert [v["code"] for v in verdicts] == ["BAD_SIGNATURE", "INVALID_PAYLOAD"]
    history = client.get(f"/account/{address}/proofs").json()["result"]["proofs"]
    assert [(p["code"], p["accepted"]) for p in history] == [("ACCEPTED", True)]
    metrics = client.get("/metrics").text
    assert 'stepbatch_proofs_total{code="BAD_SIGNATURE"}' in metrics


# ------------------------------------------------------------------------------ 9. internals in errors

@contextlib.contextmanager
def failing(mongo_uri: str, commands: list[str]):
    """The database fails `commands` of the service (its client's app name) until the block ends."""
    with pymongo.MongoClient(mongo_uri) as admin:
        try:
            admin.admin.command("configureFailPoint", "failCommand", mode="alwaysOn",
                                data={"failCommands": commands, "errorCode": 2, "appName": "stepbatch"})
        except pymongo.errors.OperationFailure as err:
            pytest.skip(f"server has no failpoints (start it with test commands): {err}")
        try:
            yield
        finally:
            admin.admin.command("configureFailPoint", "failCommand", mode="off")


def test_a_failing_database_is_answered_without_its_internals_and_keeps_the_connection(service, mongo_uri):
    _server, client = service
    with failing(mongo_uri, ["insert", "update", "commitTransaction", "ping"]):
        failed = client.post("/proof/submit", json=proof(ACCOUNT_KEYS[2]))
        health = client.get("/health")
    assert refused(failed, 500, "INTERNAL") == "the batch could not be committed; retry shortly"
    assert failed.headers.get("connection") != "close"
    assert health.status_code == 503
    assert health.json()["database"] == {"reachable": False, "error": "the database did not answer a ping"}
    for answer in (failed, health):
        assert "failCommand" not in answer.text and "127.0.0.1" not in answer.text
    wait_until(lambda: client.get("/health").status_code == 200, what="the database back")
    assert client.post("/proof/submit", json=proof(ACCOUNT_KEYS[0])).status_code == 200


# ------------------------------------------------------------------------------ 11. headers

def test_every_answer_has_the_headers_of_a_public_json_api(service):
    _server, client = service
    address = signing.address_of(ACCOUNT_KEYS[0])
    account = client.get(f"/account/{address}", headers={"origin": "https://app.example"})
    assert account.headers["x-content-type-options"] == "nosniff"
    assert account.headers["cache-control"] == "no-store"
    assert account.headers["access-control-allow-origin"] == "*"
    assert "server" not in account.headers
    missing = client.get("/no/such/route")
    assert api_refused(missing, 404, "NOT_FOUND") == "no route '/no/such/route'"
    assert missing.headers["content-type"] == "application/json"
    wrong = client.get("/proof/submit")
    assert refused(wrong, 405, "METHOD_NOT_ALLOWED") == "GET is not allowed here; allowed: POST"
    preflight = client.options("/proof/submit", headers={
        "origin": "https://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
    assert "content-type" in preflight.headers["access-control-allow-headers"]
    assert client.options("/mesh/active").headers["allow"] == "GET, POST, OPTIONS"
    triangle = mesh.triangle_at(*WORLD_CENTRE, LEVEL)
    assert client.get(f"/mesh/polygon/{triangle}").headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------------------ fuzz

ROUTES = [
    ("/mesh/triangleAt", ["lat", "lon", "level", "includePolygon"]),
    ("/mesh/search", ["bbox", "level", "maxResults", "includePolygon"]),
    ("/mesh/nearby", ["lat", "lon", "radius_m", "level"]),
    ("/mesh/active", ["level", "maxResults", "includePolygon"]),
    ("/account/{}", []), ("/account/{}/proofs", ["limit", "before"]),
    ("/mesh/polygon/{}", []), ("/mesh/children/{}", []), ("/mesh/parent/{}", []), ("/mesh/info/{}", []),
]
_NUMBERISH = st.sampled_from(["0", "-0", "1", "21", "22", "-1", "90", "-90.000001", "180", "1e309", "nan", "inf",
                              "-inf", "1e-400", "0x10", "1_000", " 5", "5 ", "", "99999999999999999999",
                              "1000000", "1000001", "true", "-180,-90,180,90", "19,47,19.1,47.1",
                              "1:2", "999999999999999999:999999999", "STEP-TRI-v1:A1-00000000000000000000-AAA"])
_VALUES = st.one_of(_NUMBERISH, st.text(max_size=40), st.floats(allow_nan=True).map(repr),
                    st.integers(-10 ** 20, 10 ** 20).map(str))
_SEGMENTS = st.one_of(st.text(max_size=60), st.just("0x" + "a" * 40), st.just(mesh.triangle_at(*WORLD_CENTRE, LEVEL)),
                      st.builds(lambda lat, lon, level: mesh.triangle_at(lat, lon, level),
                                st.floats(-90, 90), st.floats(-180, 180), st.integers(1, 21)))


def _envelope_ok(answer: httpx.Response) -> None:
    assert answer.status_code in (200, 400, 404, 405, 413), (answer.status_code, answer.text)
    body = answer.json()
    assert body["ok"] is (answer.status_code == 200), answer.text
    assert answer.headers["x-content-type-options"] == "nosniff"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), segment=_SEGMENTS, data=st.data())
def test_fuzzed_route_parameters_get_clear_answers(service, route, segment, data):
    server, _client = service
    path, names = route
    params = {name: data.draw(_VALUES, label=name) for name in names if data.draw(st.booleans(), label=f"has {name}")}
    url = path.format(quote(segment, safe="")) if "{}" in path else path
    with client_from(server, "127.0.0.5") as client:
        _envelope_ok(client.get(url, params=params))


_JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                     max_leaves=12)
_PROOF_KEYS = ["version", "account", "triangleId", "lat", "lon", "accuracy", "timestamp", "nonce"]


@st.composite
def _proof_like(draw):
    document = proof(ACCOUNT_KEYS[draw(st.integers(0, 3))])
    for key in draw(st.lists(st.sampled_from(_PROOF_KEYS), max_size=3)):
        document["payload"][key] = draw(_JSON)
    if draw(st.booleans()):
        document["signature"] = draw(_JSON)
    return document


_ROWS = st.lists(st.one_of(_proof_like(), _JSON), max_size=8)
_ARROW_TYPES = st.sampled_from([pa.string(), pa.large_string(), pa.float64(), pa.float32(), pa.int64(), pa.null(),
                                pa.bool_(), pa.binary(), pa.list_(pa.int8()), pa.dictionary(pa.int8(), pa.string())])


@st.composite
def _arrow_body(draw):
    rows = draw(st.integers(0, 20))
    columns = {}
    for name in draw(st.lists(st.sampled_from(["version", "account", "triangle_id", "lat", "lon", "accuracy",
                                               "timestamp", "nonce", "signature", "payload_error", "extra"]),
                              unique=True, max_size=6)):
        kind = draw(_ARROW_TYPES)
        values = [None] * rows if pa.types.is_null(kind) else None
        if values is None:
            base = {"string": "x", "large_string": "y", "double": 1.5, "float": 2.5, "int64": 3, "bool": True,
                    "binary": b"z"}.get(str(kind))
            values = [[1, 2]] * rows if pa.types.is_list(kind) else ["d"] * rows if base is None else [base] * rows
        columns[name] = pa.array(values, kind) if not pa.types.is_dictionary(kind) else \
            pa.array(values).dictionary_encode()
    table = pa.table(columns) if columns else pa.table({"x": pa.nulls(rows)}).drop_columns(["x"])
    body = bytearray(arrow_stream(table))
    for _ in range(draw(st.integers(0, 3))):
        body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    return bytes(body[:draw(st.integers(0, len(body)))]) if draw(st.booleans()) else bytes(body)


_BODIES = st.one_of(
    st.tuples(st.just("application/json"), _ROWS.map(lambda rows: json.dumps(rows).encode())),
    st.tuples(st.just("application/x-ndjson"), _ROWS.map(lambda rows: "\n".join(map(json.dumps, rows)).encode())),
    st.tuples(st.just(ARROW), _arrow_body()),
    st.tuples(st.sampled_from(["text/plain", "", "application/json", ARROW]), st.binary(max_size=300)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_BODIES)
def test_fuzzed_bulk_bodies_in_every_format_get_clear_answers(service, body):
    server, _client = service
    kind, content = body
    with client_from(server, "127.0.0.6") as client:
        answer = client.post("/proofs", content=content, headers={"content-type": kind} if kind else {})
    assert answer.status_code in (200, 400, 413), (answer.status_code, answer.text)
    if answer.status_code == 200:
        assert all(orjson.loads(line)["code"] for line in answer.content.splitlines())
    else:
        assert answer.json()["code"] == "INVALID_PAYLOAD" and answer.json()["ok"] is False


def test_after_the_attacks_the_process_is_alive_and_its_memory_bounded(service):
    server, client = service
    assert server.process.poll() is None
    assert_serves_others(client)
    assert peak_rss_bytes(server) < 2 * 1024 ** 3
