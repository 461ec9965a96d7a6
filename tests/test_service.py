"""`stepbatch serve` as a real process over loopback, against the test database server."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import itertools
import json
import signal
import subprocess
import sys

import httpx
import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from stepbatch import crypto, mesh, read_proofs
from stepbatch.crypto import signing
from stepbatch.mesh.regions import LevelRegion
from tests.naive import Gates, NaiveValidator
from tests.processes import server_process, wait_until
from tests.strategies import ACCOUNT_KEYS, WORLD_CENTRE, point_in

pytestmark = pytest.mark.mongo

LEVEL = 14
REGION = LevelRegion(LEVEL, LEVEL, (19.0, 47.45, 19.1, 47.55))
_nonces = itertools.count()


def _now_iso(offset_ms: int = 0) -> str:
    moment = dt.datetime.now(dt.timezone.utc) + dt.timedelta(milliseconds=offset_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def proof(key: bytes, triangle_id: str | None = None, nonce: str | None = None, offset_ms: int = 0,
          signer: bytes | None = None, where: tuple | None = None) -> dict:
    """A proof in the API shape, timestamped now."""
    triangle_id = triangle_id or mesh.triangle_at(*WORLD_CENTRE, LEVEL)
    lat, lon = where or point_in(triangle_id, (1.0, 1.0, 1.0))
    payload = {"version": "STEP-PROOF-v1", "account": signing.address_of(key), "triangleId": triangle_id,
               "lat": lat, "lon": lon, "accuracy": 8, "timestamp": _now_iso(offset_ms),
               "nonce": nonce or f"nonce-{next(_nonces)}"}
    return {"payload": payload, "signature": crypto.sign_proof(signer or key, payload)}


@pytest.fixture
def service(mongo_uri, mongo_db_name, mongo_store, request):
    """A running `stepbatch serve` on a free port with the test region declared; extra CLI options
    come from `@pytest.mark.serve_args(...)`."""
    mongo_store.declare(REGION)
    marker = request.node.get_closest_marker("serve_args")
    extra = list(marker.args) if marker else []
    args = ["--mongodb-uri", mongo_uri, "serve", "--port", "0", "--db", mongo_db_name, *extra]
    with server_process(args) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            wait_until(lambda: client.get("/ready").status_code == 200, what="/ready")
            yield server, client


def test_submit_answers_like_the_original_server(service):
    _server, client = service
    first = proof(ACCOUNT_KEYS[0])
    accepted = client.post("/proof/submit", json=first)
    assert accepted.status_code == 200, accepted.text
    body = accepted.json()
    reward = round(1e6 / 2 ** (LEVEL - 1))
    assert body["ok"] is True and body["unit"] == "STEP" and body["level"] == LEVEL and body["clicks"] == 1
    assert body["reward"] == f"0.{reward:06d}" == body["balance"]
    assert body["triangleId"] == first["payload"]["triangleId"]
    assert dt.datetime.fromisoformat(body["processedAt"].replace("Z", "+00:00"))

    cases = [
        (first, 409, "NONCE_REPLAY"),
        (proof(ACCOUNT_KEYS[1], signer=ACCOUNT_KEYS[2]), 401, "BAD_SIGNATURE"),
        (proof(ACCOUNT_KEYS[1], triangle_id=mesh.triangle_at(0.0, 0.0, LEVEL)), 404, "TRIANGLE_NOT_FOUND"),
        (proof(ACCOUNT_KEYS[1], offset_ms=-10 * 60_000), 422, "CLOCK_DRIFT"),
        (proof(ACCOUNT_KEYS[0]), 422, "MORATORIUM"),
        ({"payload": {"version": "STEP-PROOF-v1"}, "signature": "0x00"}, 400, "INVALID_PAYLOAD"),
    ]
    for document, status, code in cases:
        answer = client.post("/proof/submit", json=document)
        assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
        assert answer.json()["ok"] is False and answer.json()["message"] and answer.json()["timestamp"]

    broken = client.post("/proof/submit", content=b'{"payload": ', headers={"content-type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["message"]
    assert client.post("/proof/submit", json=[1, 2]).status_code == 400

    account = client.get(f"/account/{first['payload']['account']}").json()["result"]
    assert (account["balanceMicro"], account["proofCount"]) == (reward, 1)
    history = client.get(f"/account/{first['payload']['account']}/proofs").json()["result"]["proofs"]
    assert [p["code"] for p in history] == ["MORATORIUM", "NONCE_REPLAY", "ACCEPTED"]
    assert "since the last accepted proof" in history[0]["message"]
    assert client.get("/account/0x123/proofs").status_code == 400


def test_concurrent_requests_get_the_verdicts_of_their_committed_order(service):
    server, client = service
    triangles = mesh.children(mesh.parent(mesh.triangle_at(*WORLD_CENTRE, LEVEL)))
    documents = []
    for k in range(60):
        # Every tenth proof re-uses the nonce of the proof before it of the same account.
        nonce = documents[k - 4]["payload"]["nonce"] if k % 10 == 9 else None
        documents.append(proof(ACCOUNT_KEYS[k % 4], triangles[k % 2], nonce=nonce, offset_ms=k))

    async def send_all():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as session:
            return await asyncio.gather(*(session.post("/proof/submit", json=d) for d in documents))

    answers = asyncio.run(send_all())
    codes = [a.json().get("code", "ACCEPTED") for a in answers]
    assert codes.count("ACCEPTED") >= 1

    # Rebuild the order the service committed them in from the stored history, and run the plain
    # one-by-one reference over that order: every answer must be the reference's verdict.
    stored = {}
    for key in ACCOUNT_KEYS:
        address = signing.address_of(key)
        page = client.get(f"/account/{address}/proofs", params={"limit": 1000}).json()["result"]["proofs"]
        for row in page:
            stored[(address, row["nonce"], row["timestamp"], row["triangleId"])] = (row["batchId"], row["index"])
    position = {id(d): stored[(d["payload"]["account"], d["payload"]["nonce"], d["payload"]["timestamp"],
                               d["payload"]["triangleId"])] for d in documents}
    order = sorted(range(len(documents)), key=lambda i: position[id(documents[i])])
    naive = NaiveValidator(mesh.children(mesh.parent(triangles[0])), Gates())
    expected, _digest = naive.validate(read_proofs([documents[i] for i in order]), "all", None)
    by_index = {i: row[0] for i, row in zip(order, expected)}
    assert codes == [by_index[i] for i in range(len(documents))]
    metrics = client.get("/metrics").text
    assert f'stepbatch_proofs_total{{code="ACCEPTED"}} {float(codes.count("ACCEPTED"))}' in metrics
    assert "stepbatch_commit_seconds_bucket" in metrics and "stepbatch_queue_depth 0.0" in metrics


@pytest.mark.serve_args("--batch-size", "1000", "--max-wait-ms", "60000", "--queue-limit", "3")
def test_a_full_queue_gets_503_and_shutdown_answers_every_accepted_request(service):
    server, client = service

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as session:
            waiting = [asyncio.create_task(session.post("/proof/submit", json=proof(ACCOUNT_KEYS[k])))
                       for k in range(3)]
            await asyncio.to_thread(wait_until, lambda: "stepbatch_queue_depth 3.0" in client.get("/metrics").text,
                                    what="three queued proofs")
            refused = await session.post("/proof/submit", json=proof(ACCOUNT_KEYS[3]))
            server.signal(signal.SIGTERM)
            return refused, await asyncio.gather(*waiting)

    refused, answered = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "OVERLOADED"
    assert [a.status_code for a in answered] == [200, 200, 200]
    assert server.wait() == 0
    assert "every accepted request was answered" in server.output


@pytest.mark.serve_args("--rate-account", "0.01/1", "--max-body-bytes", "2000")
def test_rate_and_body_limits(service):
    _server, client = service
    assert client.post("/proof/submit", json=proof(ACCOUNT_KEYS[0])).status_code == 200
    limited = client.post("/proof/submit", json=proof(ACCOUNT_KEYS[0]))
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert client.post("/proof/submit", json=proof(ACCOUNT_KEYS[1])).status_code == 200
    big = proof(ACCOUNT_KEYS[2], nonce="x" * 3000)
    assert client.post("/proof/submit", json=big).status_code == 413


def test_bulk_submission_in_three_formats(service):
    _server, client = service
    triangle = mesh.triangle_at(*WORLD_CENTRE, LEVEL)
    rows = [proof(ACCOUNT_KEYS[0], triangle, nonce="a"), proof(ACCOUNT_KEYS[0], triangle, nonce="a"), {"junk": 1},
            proof(ACCOUNT_KEYS[1], triangle, nonce="b")]
    answer = client.post("/proofs", json=rows)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/x-ndjson")
    verdicts = [orjson.loads(line) for line in answer.content.splitlines()]
    assert [(v["index"], v["code"]) for v in verdicts] == [
        (0, "ACCEPTED"), (1, "NONCE_REPLAY"), (2, "INVALID_PAYLOAD"), (3, "ACCEPTED")]

    more = [proof(ACCOUNT_KEYS[2], triangle), proof(ACCOUNT_KEYS[3], triangle)]
    ndjson = b"".join(orjson.dumps(r) + b"\n" for r in more)
    answer = client.post("/proofs", content=ndjson, headers={"content-type": "application/x-ndjson"})
    assert [orjson.loads(line)["code"] for line in answer.content.splitlines()] == ["ACCEPTED", "ACCEPTED"]

    table = read_proofs([proof(ACCOUNT_KEYS[2], triangle, offset_ms=20_000),
                         proof(ACCOUNT_KEYS[2], triangle, offset_ms=25_000)]).drop_columns(["payload_error"])
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    answer = client.post("/proofs", content=sink.getvalue(), headers={
        "content-type": "application/vnd.apache.arrow.stream", "accept": "application/vnd.apache.arrow.stream"})
    result = ipc.open_stream(pa.BufferReader(answer.content)).read_all()
    assert result.column("code").to_pylist() == ["ACCEPTED", "MORATORIUM"]


def test_mesh_routes_read_geometry_and_state(service):
    _server, client = service
    lat, lon = WORLD_CENTRE
    at = client.get("/mesh/triangleAt", params={"lat": lat, "lon": lon, "level": LEVEL,
                                                "includePolygon": "true"}).json()["result"]
    triangle_id = mesh.triangle_at(lat, lon, LEVEL)
    assert at["triangleId"] == triangle_id and at["polygon"] == mesh.polygon(triangle_id)
    assert at["estimatedSideLength"] == round(8_000_000 / 2 ** (LEVEL - 1))
    assert client.get("/mesh/triangleAt", params={"lat": 91, "lon": 0, "level": 3}).status_code == 400
    assert client.get(f"/mesh/polygon/{triangle_id}").json()["result"]["polygon"] == mesh.polygon(triangle_id)
    assert [c["triangleId"] for c in client.get(f"/mesh/children/{triangle_id}").json()["result"]["children"]] \
        == mesh.children(triangle_id)
    assert client.get(f"/mesh/parent/{triangle_id}").json()["result"]["parent"] == mesh.parent(triangle_id)
    bad = client.get("/mesh/polygon/STEP-TRI-v1:A1-00000000000000000000-AAA")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_TRIANGLE_ID"

    assert client.post("/proof/submit", json=proof(ACCOUNT_KEYS[0], triangle_id)).status_code == 200
    info = client.get(f"/mesh/info/{triangle_id}")
    assert info.status_code == 200, info.text
    info = info.json()["result"]
    assert (info["state"], info["clicks"], info["level"]) == ("active", 1, LEVEL)
    declared = client.get(f"/mesh/info/{mesh.children(mesh.parent(triangle_id))[0]}").json()["result"]
    assert (declared["state"], declared["clicks"]) == ("active", 0)
    assert client.get(f"/mesh/info/{mesh.triangle_at(0.0, 0.0, LEVEL)}").status_code == 404
    found = client.get("/mesh/search", params={"bbox": "19.03,47.49,19.05,47.51", "level": LEVEL}).json()["result"]
    states = {t["triangleId"]: (t["exists"], t["clicks"]) for t in found["triangles"]}
    assert states[triangle_id] == (True, 1) and found["count"] == len(found["triangles"]) > 1
    near = client.get("/mesh/nearby", params={"lat": lat, "lon": lon, "radius_m": 2000, "level": LEVEL}).json()
    assert triangle_id in {t["triangleId"] for t in near["result"]["triangles"]}
    assert all(t["distanceM"] <= 2000 for t in near["result"]["triangles"])
    active = client.get("/mesh/active").json()["result"]["triangles"]
    assert [(t["triangleId"], t["clicks"]) for t in active] == [(triangle_id, 1)]
    config = client.get("/proof/config").json()
    assert (config["speedLimitMps"], config["subdivideAtClicks"]) == (15.0, 11)
    health = client.get("/health").json()
    assert health["database"]["reachable"] is True and health["queueDepth"] == 0


@pytest.mark.bench
def test_bench_drives_the_service_over_http(service, mongo_uri, mongo_db_name, tmp_path):
    server, client = service
    result = subprocess.run(
        [sys.executable, "-m", "stepbatch", "--mongodb-uri", mongo_uri, "bench", "--target", server.url,
         "--db", mongo_db_name, "--mode", "open", "--rate", "100", "--duration", "4", "--closed-proofs", "400",
         "--connections", "32", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| s: stepbatch serve, HTTP | closed |" in result.stdout
    assert "| s: stepbatch serve, HTTP | open | " in result.stdout
    report = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    for run in report["runs"]:
        summary = run["repeats"][0]
        assert summary["lost"] == 0 and summary["committed_clicks"] == summary["accepted"] > 0
        assert set(summary["counts"]) <= {"ACCEPTED", "NONCE_REPLAY", "TOO_FAST", "MORATORIUM", "BAD_SIGNATURE",
                                          "OUT_OF_BOUNDS", "TRIANGLE_NOT_FOUND", "CLOCK_DRIFT",
                                          "LOW_GPS_ACCURACY", "INVALID_PAYLOAD", "UNSUPPORTED_VERSION",
                                          "TRIANGLE_NOT_ACTIVE"}
    assert list(tmp_path.glob("bench-*.png"))
