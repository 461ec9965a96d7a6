"""The original server's JSON envelopes and status codes (SPEC §7), encoded with orjson."""

from __future__ import annotations

import datetime as dt

import orjson
from starlette.responses import Response

from stepbatch.protocol import Code

# Status of a rejected proof, per verdict code.
STATUS_BY_CODE = {
    Code.INVALID_PAYLOAD.name: 400, Code.UNSUPPORTED_VERSION.name: 400, Code.BAD_SIGNATURE.name: 401,
    Code.NONCE_REPLAY.name: 409, Code.TRIANGLE_NOT_ACTIVE.name: 409, Code.TRIANGLE_NOT_FOUND.name: 404,
    Code.LOW_GPS_ACCURACY.name: 422, Code.CLOCK_DRIFT.name: 422, Code.OUT_OF_BOUNDS.name: 422,
    Code.TOO_FAST.name: 422, Code.MORATORIUM.name: 422,
}


class JSON(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def iso_now() -> str:
    return iso_ms(dt.datetime.now(dt.timezone.utc))


def iso_ms(moment: dt.datetime) -> str:
    """ISO-8601 in UTC with milliseconds and `Z`, as JavaScript's toISOString writes it."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def step_amount(micro: int) -> str:
    """Micro-STEP as a decimal string with 6 decimals, integers only (61 → "0.000061")."""
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(int(micro)), 1_000_000)
    return f"{sign}{whole}.{fraction:06d}"


def proof_error(code: str, message: str, status: int, headers: dict | None = None) -> JSON:
    """A refused proof: `{"ok": false, "code", "message", "timestamp"}` (the submit routes' shape)."""
    return JSON({"ok": False, "code": code, "message": message, "timestamp": iso_now()}, status, headers)


def api_ok(result) -> JSON:
    """`{"ok": true, "result": …, "timestamp"}` (the mesh and account routes' shape)."""
    return JSON({"ok": True, "result": result, "timestamp": iso_now()})


def api_error(code: str, message: str, status: int = 400, headers: dict | None = None) -> JSON:
    """`{"ok": false, "error": {"code", "message"}, "timestamp"}` (the mesh and account routes' shape)."""
    return JSON({"ok": False, "error": {"code": code, "message": message}, "timestamp": iso_now()}, status,
                headers)
