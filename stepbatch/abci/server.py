"""The ABCI socket server: CometBFT's four connections (consensus, mempool, query, snapshot), each a
stream of unsigned-varint length-prefixed `Request` messages answered in order by `Response`s.

Each connection has a thread of its own that reads a request, answers it and reads the next, so the
answers of one connection are in request order; the application serialises what touches state. A
request the application fails on gets a `ResponseException` naming the error, never silence.
"""

from __future__ import annotations

import logging
import socketserver
import urllib.parse

from stepbatch.abci import protos
from stepbatch.store.base import brief

log = logging.getLogger("stepbatch.abci")
MAX_MESSAGE_BYTES = 104_857_600  # CometBFT's own limit on an ABCI message


def encode_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_uvarint(stream) -> int | None:
    """The next unsigned varint of a binary stream; None at a clean end of stream."""
    value, shift = 0, 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift == 0:
                return None
            raise EOFError("the connection closed inside a message length")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("a message length longer than 64 bits")


class _Connection(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        app, t = self.server.app, self.server.t
        peer = self.client_address
        while True:
            try:
                size = read_uvarint(self.rfile)
                if size is None:
                    return
                if size > MAX_MESSAGE_BYTES:
                    raise ValueError(f"a message of {size:,} bytes exceeds {MAX_MESSAGE_BYTES:,}")
                body = self.rfile.read(size)
                if len(body) != size:
                    raise EOFError("the connection closed inside a message")
            except (EOFError, ValueError, OSError) as err:
                log.warning("ABCI connection %s closed: %s", peer, err)
                return
            response = self._answer(app, t, body)
            data = response.SerializeToString()
            self.wfile.write(encode_uvarint(len(data)) + data)
            if response.WhichOneof("value") == "flush":
                self.wfile.flush()

    def _answer(self, app, t, body: bytes):
        try:
            request = t.Request.FromString(body)
            kind = request.WhichOneof("value")
            if kind is None:
                raise ValueError("an empty request")
            if kind == "echo":
                return t.Response(echo=t.ResponseEcho(message=request.echo.message))
            if kind == "flush":
                return t.Response(flush=t.ResponseFlush())
            return t.Response(**{kind: getattr(app, kind)(getattr(request, kind))})
        except Exception as err:  # every failure is answered, so CometBFT never waits on a dead request
            log.exception("ABCI request failed")
            return t.Response(exception=t.ResponseException(error=f"{type(err).__name__}: {brief(err, 1000)}"))


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(app, address: str) -> socketserver.BaseServer:
    """Serve `app` on `tcp://host:port` or `unix:///path`; returns the server (call serve_forever)."""
    parsed = urllib.parse.urlparse(address)
    if parsed.scheme == "tcp":
        server = _Server((parsed.hostname or "127.0.0.1", parsed.port or 26658), _Connection)
    elif parsed.scheme == "unix":
        server = _UnixServer(parsed.path, _Connection)
    else:
        raise ValueError(f"an ABCI address is tcp://HOST:PORT or unix:///PATH, got {address!r}")
    server.app, server.t = app, protos.load()
    return server
