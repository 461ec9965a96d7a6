"""A few CometBFT RPC calls over HTTP (JSON-RPC 2.0): what the tests, `localnet` and the consensus
load test need from a node."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import urllib.error
import urllib.request


class RpcError(RuntimeError):
    pass


def call(rpc: str, method: str, timeout_s: float = 30.0, **params) -> dict:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(rpc, body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            answer = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise RpcError(f"{rpc} {method}: {err}") from err
    if "error" in answer:
        raise RpcError(f"{rpc} {method}: {answer['error']}")
    return answer["result"]


def broadcast(rpc: str, tx: bytes, mode: str = "sync") -> dict:
    """`broadcast_tx_{mode}` of one transaction; the node's CheckTx answer for sync."""
    return call(rpc, f"broadcast_tx_{mode}", tx=base64.b64encode(tx).decode())


def tx_hash(tx: bytes) -> str:
    return hashlib.sha256(tx).hexdigest().upper()


def committed_tx(rpc: str, tx: bytes) -> dict | None:
    """{height, code, data, log} of a transaction in a committed block, or None if it is in none (yet)."""
    try:
        result = call(rpc, "tx", hash=base64.b64encode(hashlib.sha256(tx).digest()).decode())
    except RpcError:
        return None
    outcome = result["tx_result"]
    return {"height": int(result["height"]), "code": int(outcome.get("code", 0)),
            "data": base64.b64decode(outcome.get("data") or "").decode(), "log": outcome.get("log", "")}


def height(rpc: str) -> int:
    return int(call(rpc, "status", timeout_s=5)["sync_info"]["latest_block_height"])


def block(rpc: str, at: int) -> dict:
    """{height, time (epoch ms), txs (bytes), app_hash (hex of the state before the block)}."""
    result = call(rpc, "block", height=str(at))["block"]
    header = result["header"]
    return {"height": int(header["height"]), "time_ms": time_ms(header["time"]),
            "txs": [base64.b64decode(tx) for tx in result["data"]["txs"] or []], "app_hash": header["app_hash"]}


def block_results(rpc: str, at: int) -> dict:
    """{height, tx_results: [{code, data (str), log}], app_hash (hex after the block)}."""
    result = call(rpc, "block_results", height=str(at))
    return {"height": int(result["height"]), "app_hash": base64.b64decode(result.get("app_hash") or "").hex(),
            "tx_results": [{"code": int(r.get("code", 0)), "data": base64.b64decode(r.get("data") or "").decode(),
                            "log": r.get("log", "")} for r in result.get("txs_results") or []]}


def time_ms(text: str) -> int:
    """RFC 3339 with up to nanoseconds (CometBFT's header time) → epoch milliseconds, truncated."""
    stamp, _, fraction = text.rstrip("Z").partition(".")
    seconds = dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.timezone.utc).timestamp()
    return int(seconds) * 1000 + int((fraction + "000")[:3])
