"""Running the service's ASGI app on uvicorn (httptools and uvloop; see the README for the choice).

uvicorn bounds neither how long a client may take to send its request line and headers nor how
long its body, and it accepts every connection the kernel hands it: one client holding thousands of
idle sockets runs the process out of file descriptors. `GuardedProtocol` adds those bounds: a
connection over the cap (in all, or from one address) is answered 503 and closed at once; a request
whose headers or body do not arrive in time is answered 408 (when no answer has begun) and closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import ClassVar

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from stepbatch.service.batcher import LiveBatcher
from stepbatch.service.responses import iso_now


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0  # from a connection's first byte (or its opening) to its headers' end
    body_timeout_s: float = 30.0  # from the end of the headers to the end of the body
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1000  # open connections in all
    max_connections_per_ip: int = 100  # open connections from one client address


def _refusal(status: int, reason: str, code: str, message: str, retry_after: str | None = None) -> bytes:
    body = orjson.dumps({"ok": False, "error": {"code": code, "message": message}, "timestamp": iso_now()})
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "x-content-type-options: nosniff", "connection: close"]
    if retry_after:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and connection caps."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    _per_ip: ClassVar[dict[str, int]] = {}  # shared by every connection of one server (set per server class)

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._counted = self.client[0] if self.client else None
        if self._counted is not None:
            self._per_ip[self._counted] = self._per_ip.get(self._counted, 0) + 1
        from_here = self._per_ip.get(self._counted, 0)
        if len(self.connections) > self.limits.max_connections or from_here > self.limits.max_connections_per_ip:
            what = "connections from this address" if from_here > self.limits.max_connections_per_ip \
                else "connections"
            transport.write(_refusal(503, "Service Unavailable", "TOO_MANY_CONNECTIONS",
                                     f"too many open {what}; close some and retry", "1"))
            transport.close()
            return
        self._arm(self.limits.header_timeout_s, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._counted is not None:
            left = self._per_ip.get(self._counted, 1) - 1
            if left > 0:
                self._per_ip[self._counted] = left
            else:
                self._per_ip.pop(self._counted, None)
            self._counted = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm(self.limits.header_timeout_s, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_s, self._body_too_slow)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, handler) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, handler)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_refusal(408, "Request Timeout", "REQUEST_TIMEOUT",
                                          f"the request's headers did not arrive within "
                                          f"{self.limits.header_timeout_s:g} s"))
        self.transport.close()

    def _body_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self.transport.write(_refusal(408, "Request Timeout", "REQUEST_TIMEOUT",
                                          f"the request's body did not arrive within "
                                          f"{self.limits.body_timeout_s:g} s"))
        if cycle is not None:
            # The app sees the client leave; what it sends after this is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedProtocol]:
    """A protocol class for one server: its limits and its count of connections per address."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits, "_per_ip": {}})


class Server(uvicorn.Server):
    """uvicorn's server, which on SIGTERM/SIGINT also closes the open batch at once: uvicorn waits for
    the requests in flight to be answered before it shuts the app down, and those wait for their batch."""

    def __init__(self, config: uvicorn.Config, batcher: LiveBatcher):
        super().__init__(config)
        self.batcher = batcher

    def handle_exit(self, sig, frame) -> None:
        self.batcher.drain_soon()
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once it has shut down, which would kill the process before
        # the command closes its store (and the embedded database); the command exits 0 instead.
        self._captured_signals.clear()


def run(app, listener: socket.socket, log_level: str = "info", limits: ConnectionLimits = ConnectionLimits(),
        forwarded_allow_ips: list[str] = ()) -> None:
    """Serve `app` on an already bound socket until SIGTERM/SIGINT, then shut down cleanly.

    X-Forwarded-For and X-Forwarded-Proto are believed only from `forwarded_allow_ips` (none by
    default: uvicorn's own default trusts loopback, where a local proxy or any local user may sit)."""
    config = uvicorn.Config(app, log_level=log_level, access_log=False, loop="uvloop", http=guarded_protocol(limits),
                            timeout_graceful_shutdown=None, lifespan="on", server_header=False, ws="none",
                            timeout_keep_alive=limits.keep_alive_s, proxy_headers=bool(forwarded_allow_ips),
                            forwarded_allow_ips=list(forwarded_allow_ips) or [])
    Server(config, app.state.service.batcher).run(sockets=[listener])
