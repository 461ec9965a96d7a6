"""What every answer of the service carries, whatever route gave it (or failed to).

`Guard` is the outermost piece of the app: it adds the headers a public JSON API sends
(`X-Content-Type-Options`, `Cache-Control` on what must not be cached, the CORS policy), answers
OPTIONS itself, and turns any exception that escapes a route into the JSON 500 envelope without
internals, logged in full here. Starlette's own last resort re-raises into uvicorn, which closes
the connection and answers in plain text; a client should see neither.
"""

from __future__ import annotations

import dataclasses
import logging

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from stepbatch.service.responses import api_error, proof_error

log = logging.getLogger("stepbatch.service")

# Answers that hold live state (an account, a triangle's clicks, the queue): never cached.
_LIVE_PREFIXES = ("/account", "/proof", "/mesh", "/health", "/ready", "/metrics")
_METHODS = "GET, POST, OPTIONS"
_REQUEST_HEADERS = "content-type, accept"


@dataclasses.dataclass(frozen=True)
class CorsPolicy:
    """Which web origins may read the API from a browser: `("*",)` any (no credentials are ever
    used, so any is safe for a public API), `()` none (no CORS headers at all)."""

    origins: tuple[str, ...] = ("*",)

    def allowed(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for a request from `origin`, or None."""
        if origin is None or not self.origins:
            return None
        if "*" in self.origins:
            return "*"
        return origin if origin in self.origins else None


class Guard:
    def __init__(self, app, cors: CorsPolicy = CorsPolicy()):
        self.app = app
        self.cors = cors

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        allow_origin = self.cors.allowed(headers.get("origin"))
        if scope["method"] == "OPTIONS":
            await self._options(scope, receive, send, headers, allow_origin)
            return
        started = False
        live = scope["path"].startswith(_LIVE_PREFIXES)

        async def guarded_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                out = MutableHeaders(scope=message)
                out["x-content-type-options"] = "nosniff"
                if live and "cache-control" not in out:
                    out["cache-control"] = "no-store"
                if allow_origin is not None:
                    out["access-control-allow-origin"] = allow_origin
                    out["access-control-expose-headers"] = "retry-after"
                    if allow_origin != "*":
                        out.add_vary_header("origin")
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except ClientDisconnect:
            return  # nobody is left to answer
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"])
            if not started:
                await internal_error(scope["path"])(scope, receive, guarded_send)

    async def _options(self, scope, receive, send, headers: Headers, allow_origin: str | None) -> None:
        extra = {"allow": _METHODS, "x-content-type-options": "nosniff", "cache-control": "no-store"}
        if allow_origin is not None:
            extra.update({"access-control-allow-origin": allow_origin, "access-control-allow-methods": _METHODS,
                          "access-control-allow-headers": _REQUEST_HEADERS, "access-control-max-age": "600"})
            if allow_origin != "*":
                extra["vary"] = "origin"
        await Response(status_code=204, headers=extra)(scope, receive, send)


def _is_proof_route(path: str) -> bool:
    return path.startswith("/proof")


def internal_error(path: str) -> Response:
    message = "internal error; it has been logged"
    if _is_proof_route(path):
        return proof_error("INTERNAL", message, 500)
    return api_error("INTERNAL", message, 500)


_HTTP_CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "TOO_LARGE"}


async def http_error(request: Request, err: HTTPException) -> Response:
    """Starlette's 404 and 405 (and any HTTPException) in the JSON envelope of the route's family."""
    code = _HTTP_CODES.get(err.status_code, "HTTP_ERROR")
    if err.status_code == 404:
        message = f"no route {request.url.path[:200]!r}"
    elif err.status_code == 405:
        message = f"{request.method} is not allowed here; allowed: {(err.headers or {}).get('Allow', '')}"
    else:
        message = str(err.detail)[:200]
    response = proof_error(code, message, err.status_code) if _is_proof_route(request.url.path) \
        else api_error(code, message, err.status_code)
    for name, value in (err.headers or {}).items():
        response.headers[name] = value
    return response
