"""The service's read routes: the mesh (geometry from `stepbatch.mesh`, state from the store, declared
regions included) and accounts (balance, and history with the code and message of every proof).

Handlers are plain functions run on the read routes' own threads (`limits.ReadGate`), so a
database read never blocks the event loop that batches proofs nor takes a thread the batcher needs.
Each read is bounded before it is paid for: it is rate limited per client address like a submit,
admitted only while few reads are waiting, enumerates at most SCANNED_KEYS keys of a level (a box's
edges at most EDGE_KEYS), reads at most a page of history, and runs under a deadline that its
database calls share (`pymongo.timeout`); it stops at its next step when the client leaves.
"""

from __future__ import annotations

import asyncio
import math
import re

import numpy as np
import pymongo
import pymongo.errors
from starlette.requests import Request
from starlette.routing import Route

from stepbatch import mesh
from stepbatch.mesh import ids as mesh_ids
from stepbatch.mesh import keys as mesh_keys
from stepbatch.mesh import levels as mesh_levels
from stepbatch.protocol import EARTH_RADIUS_M, MAX_LEVEL, Code
from stepbatch.service.limits import ReadBudget, ReadCancelled, ReadTimedOut, retry_after
from stepbatch.service.responses import api_error, api_ok, iso_ms, step_amount
from stepbatch.store.base import StoreError
from stepbatch.store.database import level_filter
from stepbatch.store.seed import existing_triangles

MAX_RESULTS = 10_000
SCANNED_KEYS = 400_000  # level keys one /mesh/nearby may measure (~30 ms)
EDGE_KEYS = 200_000  # triangles a box's edges may cross at one level (~0.1 s to find them)
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


class BadParameter(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _number(request: Request, name: str, low: float, high: float, required: bool = True) -> float | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        if required:
            raise BadParameter("MISSING_PARAMS", f"required query parameter: {name}")
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadParameter("INVALID_PARAMS", f"{name} must be a number, got {text[:40]!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise BadParameter("INVALID_PARAMS", f"{name} must be in [{low:g}, {high:g}], got {text[:40]!r}")
    return value


def _integer(request: Request, name: str, low: int, high: int, default: int | None = None) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        if default is None:
            raise BadParameter("MISSING_PARAMS", f"required query parameter: {name}")
        return default
    if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:
        raise BadParameter("INVALID_PARAMS", f"{name} must be an integer in [{low}, {high}], got {text[:40]!r}")
    return int(text)


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() == "true"


def _triangle_id(request: Request) -> str:
    triangle_id = request.path_params["triangleId"]
    try:
        mesh.decode_id(triangle_id)
    except ValueError as err:
        raise BadParameter("INVALID_TRIANGLE_ID", str(err)) from None
    return triangle_id


def _side_m(level: int) -> int:
    return round(8_000_000 / 2 ** (level - 1))


def _handled(handler):
    """A read route: rate limited, admitted, run on the read threads under a budget, cancelled when
    the client leaves; `handler(request, budget)` returns the response."""
    async def run(request: Request):
        service = request.app.state.service
        if service.ip_limit is not None:
            wait = service.ip_limit.take(request.client.host if request.client else "unknown")
            if wait > 0:
                service.metrics.refused.labels(reason="rate_limited").inc()
                return api_error("RATE_LIMITED", f"too many requests for this client address; retry in "
                                                 f"{wait:.1f} s", 429, {"Retry-After": retry_after(wait)})
        if not service.reads.admit():
            service.metrics.refused.labels(reason="reads_busy").inc()
            return api_error("OVERLOADED", "too many reads are waiting; retry shortly", 503, {"Retry-After": "1"})
        budget = ReadBudget(service.options.read_timeout_s)
        watcher = asyncio.create_task(_watch_disconnect(request, budget))
        try:
            return await service.reads.run(_bounded, handler, request, budget)
        finally:
            watcher.cancel()
            service.reads.release()
    run.__name__ = handler.__name__
    return run


async def _watch_disconnect(request: Request, budget: ReadBudget) -> None:
    # A GET's body is empty: the next message uvicorn gives after it is the client leaving.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    budget.cancelled.set()


def _bounded(handler, request: Request, budget: ReadBudget):
    try:
        with pymongo.timeout(budget.seconds):
            return handler(request, budget)
    except BadParameter as err:
        return api_error(err.code, str(err), 400)
    except ReadCancelled:
        return api_error("CANCELLED", "the client left before the answer was ready", 499)
    except (ReadTimedOut, StoreError, pymongo.errors.PyMongoError):
        # Internals (addresses, timeouts, topology) stay in the server's log, not the answer.
        return api_error("UNAVAILABLE", f"the read did not finish within {budget.seconds:g} s; retry shortly "
                                        f"or ask for less", 503, {"Retry-After": "1"})


# --------------------------------------------------------------------------------- the mesh

@_handled
def triangle_at(request: Request, budget: ReadBudget):
    lat = _number(request, "lat", -90, 90)
    lon = _number(request, "lon", -180, 180)
    level = _integer(request, "level", 1, MAX_LEVEL)
    triangle_id = mesh.triangle_at(lat, lon, level)
    face, level, path = mesh.decode_id(triangle_id)
    result = {"triangleId": triangle_id, "face": face, "level": level, "path": "".join(map(str, path)),
              "centroid": mesh.centroid(triangle_id), "estimatedSideLength": _side_m(level)}
    if _flag(request, "includePolygon"):
        result["polygon"] = mesh.polygon(triangle_id)
    return api_ok(result)


@_handled
def polygon(request: Request, budget: ReadBudget):
    triangle_id = _triangle_id(request)
    return api_ok({"triangleId": triangle_id, "polygon": mesh.polygon(triangle_id)})


@_handled
def children(request: Request, budget: ReadBudget):
    triangle_id = _triangle_id(request)
    if mesh.decode_id(triangle_id)[1] == MAX_LEVEL:
        raise BadParameter("INVALID_REQUEST", f"a level-{MAX_LEVEL} triangle has no children")
    return api_ok({"parent": triangle_id, "children": [
        {"triangleId": child, "childIndex": k} for k, child in enumerate(mesh.children(triangle_id))]})


@_handled
def parent(request: Request, budget: ReadBudget):
    triangle_id = _triangle_id(request)
    if mesh.decode_id(triangle_id)[1] == 1:
        raise BadParameter("INVALID_REQUEST", "a level-1 triangle has no parent")
    return api_ok({"child": triangle_id, "parent": mesh.parent(triangle_id)})


def _state(doc: dict | None) -> dict:
    if doc is None:
        return {"exists": False, "state": None, "clicks": 0}
    return {"exists": True, "state": doc.get("state"), "clicks": int(doc.get("clicks", 0))}


def _listed(db, keys: np.ndarray, with_polygon: bool, centroids: np.ndarray | None = None) -> list[dict]:
    ids = mesh_ids.encode_keys(keys).to_pylist()
    stored = {doc["_id"]: doc for doc in existing_triangles(db, ids)}
    centroids = mesh_keys.centroids_of_keys(keys) if centroids is None else centroids
    rings = mesh_keys.rings_of_keys(keys).tolist() if with_polygon else None
    out = []
    for k, triangle_id in enumerate(ids):
        item = {"triangleId": triangle_id,
                "centroid": {"type": "Point", "coordinates": centroids[k].tolist()},
                **_state(stored.get(triangle_id))}
        if rings is not None:
            item["polygon"] = {"type": "Polygon", "coordinates": [rings[k]]}
        out.append(item)
    return out


@_handled
def search(request: Request, budget: ReadBudget):
    db = request.app.state.service.db
    text = request.query_params.get("bbox")
    if not text:
        raise BadParameter("MISSING_PARAMS", "required query parameters: bbox, level")
    try:
        bbox = mesh_levels.check_bbox(text.split(","))
    except ValueError as err:
        raise BadParameter("INVALID_BBOX", str(err)) from None
    level = _integer(request, "level", 1, MAX_LEVEL)
    limit = _integer(request, "maxResults", 1, MAX_RESULTS, default=1000)
    try:
        keys = next(mesh_levels.iter_level_keys(level, bbox, chunk=limit, max_edge_keys=EDGE_KEYS),
                    np.empty(0, np.int64))
    except mesh_levels.TooManyEdgeTriangles:
        raise BadParameter("TOO_MANY_RESULTS", f"the box's edges cross more than {EDGE_KEYS:,} level-{level} "
                                               f"triangles; use a smaller box or a lower level") from None
    budget.check()
    triangles = _listed(db, keys, _flag(request, "includePolygon"))
    return api_ok({"bbox": list(bbox), "level": level, "count": len(triangles), "triangles": triangles})


@_handled
def nearby(request: Request, budget: ReadBudget):
    db = request.app.state.service.db
    lat = _number(request, "lat", -90, 90)
    lon = _number(request, "lon", -180, 180)
    radius_m = _number(request, "radius_m", 0, 1_000_000)
    level = _integer(request, "level", 1, MAX_LEVEL)
    pad_deg = math.degrees((radius_m + _side_m(level)) / EARTH_RADIUS_M)
    lon_pad = min(180.0, pad_deg / max(math.cos(math.radians(lat)), 1e-6))
    bbox = (((lon - lon_pad + 180) % 360) - 180 if lon_pad < 180 else -180.0, max(-90.0, lat - pad_deg),
            ((lon + lon_pad + 180) % 360) - 180 if lon_pad < 180 else 180.0, min(90.0, lat + pad_deg))
    too_many = BadParameter("TOO_MANY_RESULTS", f"more than {MAX_RESULTS} level-{level} triangles lie "
                                                f"within {radius_m:g} m; use a smaller radius or level")
    try:
        if mesh_levels.count_level(level, bbox, max_edge_keys=EDGE_KEYS) > SCANNED_KEYS:
            raise too_many
    except mesh_levels.TooManyEdgeTriangles:
        raise too_many from None
    found = []
    for keys in mesh_levels.iter_level_keys(level, bbox, chunk=50_000, max_edge_keys=EDGE_KEYS):
        budget.check()
        centroids = mesh_keys.centroids_of_keys(keys)
        distance = mesh_keys.haversine_m(np.full(len(keys), lat), np.full(len(keys), lon),
                                         centroids[:, 1], centroids[:, 0])
        near = np.flatnonzero(distance <= radius_m)
        found.append((keys[near], centroids[near], distance[near]))
        if sum(len(part[0]) for part in found) > MAX_RESULTS:
            raise too_many
    keys = np.concatenate([part[0] for part in found]) if found else np.empty(0, np.int64)
    centroids = np.concatenate([part[1] for part in found]) if found else np.empty((0, 2))
    distance = np.concatenate([part[2] for part in found]) if found else np.empty(0)
    order = np.argsort(distance, kind="stable")
    budget.check()
    triangles = _listed(db, keys[order], _flag(request, "includePolygon"), centroids[order])
    for item, metres in zip(triangles, distance[order].tolist()):
        item["distanceM"] = round(metres, 1)
    return api_ok({"lat": lat, "lon": lon, "radiusM": radius_m, "level": level,
                   "count": len(triangles), "triangles": triangles})


@_handled
def info(request: Request, budget: ReadBudget):
    db = request.app.state.service.db
    triangle_id = _triangle_id(request)
    found = existing_triangles(db, [triangle_id])
    if not found:
        return api_error("NOT_FOUND", f"triangle {triangle_id} does not exist: it is not stored, no declared "
                                      f"region covers it and its parent has not subdivided", 404)
    doc = found[0]
    face, level, path = mesh.decode_id(triangle_id)
    last_click = doc.get("lastClickAt")
    return api_ok({
        "triangleId": triangle_id, "state": doc["state"], "clicks": int(doc.get("clicks", 0)),
        "level": level, "lastClickAt": iso_ms(last_click) if last_click is not None else None,
        "components": {"face": face, "level": level, "path": "".join(map(str, path))},
        "geometry": {"polygon": mesh.polygon(triangle_id), "centroid": mesh.centroid(triangle_id),
                     "estimatedSideLength": _side_m(level)},
        "hierarchy": {"parent": mesh.parent(triangle_id),
                      "children": mesh.children(triangle_id) if level < MAX_LEVEL else None},
    })


@_handled
def active(request: Request, budget: ReadBudget):
    db = request.app.state.service.db
    level = _integer(request, "level", 1, MAX_LEVEL, default=0) if request.query_params.get("level") else None
    limit = _integer(request, "maxResults", 1, MAX_RESULTS, default=512)
    query = {"clicks": {"$gt": 0}, **(level_filter(level) if level else {})}
    docs = list(db.triangles.find(query, {"clicks": 1, "state": 1, "level": 1, "centroid": 1,
                                          "polygon": 1}).sort([("clicks", -1), ("_id", 1)]).limit(limit))
    with_polygon = _flag(request, "includePolygon")
    triangles = [{"triangleId": doc["_id"], "clicks": doc["clicks"], "state": doc["state"],
                  "level": doc.get("level"), "centroid": doc.get("centroid") or mesh.centroid(doc["_id"]),
                  **({"polygon": doc.get("polygon") or mesh.polygon(doc["_id"])} if with_polygon else {})}
                 for doc in docs]
    return api_ok({"level": level, "count": len(triangles), "triangles": triangles})


# ------------------------------------------------------------------------------- accounts

def _address(request: Request) -> str:
    address = request.path_params["address"]
    if not _ADDRESS.match(address):
        raise BadParameter("INVALID_ADDRESS", f"an account is 0x and 40 hex digits, got {address[:60]!r}")
    return address.lower()


@_handled
def account(request: Request, budget: ReadBudget):
    db = request.app.state.service.db
    address = _address(request)
    doc = db.accounts.find_one({"_id": address}) or {}
    last = doc.get("lastProof")
    balance = int(doc.get("balanceMicro", 0))
    return api_ok({
        "account": address, "balance": step_amount(balance), "balanceMicro": balance, "unit": "STEP",
        "proofCount": int(doc.get("proofCount", 0)),
        "lastProof": {"lat": last["lat"], "lon": last["lon"], "timestamp": iso_ms(last["ts"])} if last else None,
    })


@_handled
def history(request: Request, budget: ReadBudget):
    store = request.app.state.service.store
    address = _address(request)
    limit = _integer(request, "limit", 1, 1000, default=50)
    before = request.query_params.get("before")
    cursor = None
    if before:
        match = re.fullmatch(r"([0-9]{1,18}):([0-9]{1,9})", before)
        if not match:
            raise BadParameter("INVALID_PARAMS", f"before is the `next` cursor of a previous page, got "
                                                 f"{before[:40]!r}")
        cursor = (int(match[1]), int(match[2]))
        most = request.app.state.service.max_batch_rows
        if cursor[1] >= most:
            # No batch holds more rows: a cursor past them asks the store to read a history whole.
            raise BadParameter("INVALID_PARAMS", f"before is the `next` cursor of a previous page; its row "
                                                 f"index is below {most:,}, got {before[:40]!r}")
    rows = store.history(address, limit=limit + (cursor[1] + 1 if cursor else 0),
                         before_seq=cursor[0] + 1 if cursor else None).to_pylist()
    if cursor:
        rows = [row for row in rows if (row["seq"], row["index"]) < cursor]
    rows = rows[:limit]
    proofs = [{
        "batchId": row["batch_id"], "index": row["index"], "triangleId": row["triangle_id"],
        "nonce": row["nonce"], "code": row["code"], "message": row["message"],
        "accepted": row["code"] == Code.ACCEPTED.name, "reward": step_amount(row["reward_micro"]),
        "rewardMicro": row["reward_micro"], "clickNumber": row["click_number"], "speedMps": row["speed_mps"],
        "timestamp": row["timestamp"], "lat": row["lat"], "lon": row["lon"],
    } for row in rows]
    next_cursor = f"{rows[-1]['seq']}:{rows[-1]['index']}" if len(rows) == limit else None
    return api_ok({"account": address, "count": len(proofs), "proofs": proofs, "next": next_cursor})


ROUTES = [
    Route("/mesh/triangleAt", triangle_at), Route("/mesh/polygon/{triangleId}", polygon),
    Route("/mesh/children/{triangleId}", children), Route("/mesh/parent/{triangleId}", parent),
    Route("/mesh/search", search), Route("/mesh/nearby", nearby), Route("/mesh/info/{triangleId}", info),
    Route("/mesh/active", active), Route("/account/{address}", account),
    Route("/account/{address}/proofs", history),
]
