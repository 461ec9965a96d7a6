"""The ABCI socket server: CometBFT's four connections (consensus, mempool, query, snapshot), each a
stream of unsigned-varint length-prefixed `Request` messages answered in order by `Response`s.

Each connection has a thread of its own that answers its requests in order; the application
serialises what touches state. CometBFT stops the node on an exception response, so no request that
carries outside input gets one: a CheckTx or a Query the application fails on is answered with a
non-zero code, a PrepareProposal with the mempool's transactions as they are (within the byte limit),
a ProcessProposal with ACCEPT (FinalizeBlock does the work again). FinalizeBlock and Commit end the
application's process when they cannot go on (`StepApplication._fatal`); an exception answers only
what no outsider sends (Info and InitChain, which a node cannot start without, and malformed frames).
"""

from __future__ import annotations

import logging
import socketserver
import urllib.parse

from stepbatch.abci import protos, transactions
from stepbatch.abci.mempool import CODESPACE, INTERNAL_ERROR
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


def decode_uvarint(buffer, at: int) -> tuple[int, int] | None:
    """(value, position after it) of the unsigned varint at `at`, or None if the buffer ends first."""
    value, shift = 0, 0
    while at < len(buffer):
        byte = buffer[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("a message length longer than 64 bits")
    return None


def split_messages(buffer: bytearray) -> list[bytes]:
    """The complete length-prefixed messages at the start of `buffer`, removed from it."""
    messages, at = [], 0
    while True:
        header = decode_uvarint(buffer, at)
        if header is None:
            break
        size, body = header
        if size > MAX_MESSAGE_BYTES:
            raise ValueError(f"a message of {size:,} bytes exceeds {MAX_MESSAGE_BYTES:,}")
        if body + size > len(buffer):
            break
        messages.append(bytes(buffer[body:body + size]))
        at = body + size
    del buffer[:at]
    return messages


class _Connection(socketserver.BaseRequestHandler):
    """Reads whatever requests have arrived, answers them in order, writes the answers at once.

    CometBFT pipelines requests on a connection (the mempool sends CheckTx after CheckTx, and re-checks
    its whole content after every block, before one Flush), so the requests that are waiting are
    taken together: a run of consecutive CheckTx goes to the application as one batch, validated on
    all cores like any batch."""

    def handle(self) -> None:
        app, t = self.server.app, self.server.t
        buffer = bytearray()
        while True:
            try:
                messages = split_messages(buffer)
                if not messages:
                    data = self.request.recv(1 << 20)
                    if not data:
                        return
                    buffer += data
                    continue
            except (ValueError, OSError) as err:
                log.warning("ABCI connection %s closed: %s", self.client_address, err)
                return
            out = bytearray()
            for response in self._answer_all(app, t, messages):
                data = response.SerializeToString()
                out += encode_uvarint(len(data)) + data
            try:
                self.request.sendall(out)
            except OSError as err:
                log.warning("ABCI connection %s closed: %s", self.client_address, err)
                return

    def _answer_all(self, app, t, messages: list[bytes]):
        requests = []
        for body in messages:
            try:
                requests.append(t.Request.FromString(body))
            except Exception as err:
                requests.append(err)
        i = 0
        while i < len(requests):
            run = i
            while run < len(requests) and not isinstance(requests[run], Exception) \
                    and requests[run].WhichOneof("value") == "check_tx":
                run += 1
            if run - i > 1:
                yield from self._guarded(t, lambda: [t.Response(check_tx=r) for r in app.check_tx_many(
                    [request.check_tx for request in requests[i:run]])], requests[i:run])
                i = run
                continue
            yield from self._guarded(t, lambda: [self._answer(app, t, requests[i])], requests[i:i + 1])
            i += 1

    @staticmethod
    def _guarded(t, answer, requests):
        try:
            return answer()
        except Exception as err:  # every failure is answered, so CometBFT never waits on a dead request
            log.exception("ABCI request failed")
            text = f"{type(err).__name__}: {brief(err, 1000)}"
            return [_fallback(t, request, text) for request in requests]

    @staticmethod
    def _answer(app, t, request):
        if isinstance(request, Exception):
            raise ValueError(f"a request that does not decode: {request}")
        kind = request.WhichOneof("value")
        if kind is None:
            raise ValueError("an empty request")
        if kind == "echo":
            return t.Response(echo=t.ResponseEcho(message=request.echo.message))
        if kind == "flush":
            return t.Response(flush=t.ResponseFlush())
        return t.Response(**{kind: getattr(app, kind)(getattr(request, kind))})




def _fallback(t, request, text: str):
    """The answer to a request the application failed on: a non-zero code where the request carries
    outside input, an exception response only where it does not."""
    kind = None if isinstance(request, Exception) else request.WhichOneof("value")
    if kind == "check_tx":
        return t.Response(check_tx=t.ResponseCheckTx(code=INTERNAL_ERROR, codespace=CODESPACE,
                                                     log=f"this node could not check the transaction: {text}"))
    if kind == "query":
        return t.Response(query=t.ResponseQuery(code=INTERNAL_ERROR, codespace=CODESPACE,
                                                log=f"this node could not answer the query: {text}"))
    if kind == "prepare_proposal":
        return t.Response(prepare_proposal=t.ResponsePrepareProposal(txs=transactions.within_block_limits(
            list(request.prepare_proposal.txs), request.prepare_proposal.max_tx_bytes)))
    if kind == "process_proposal":
        return t.Response(process_proposal=t.ResponseProcessProposal(status=t.ResponseProcessProposal.ACCEPT))
    if kind == "extend_vote":
        return t.Response(extend_vote=t.ResponseExtendVote())
    if kind == "verify_vote_extension":
        return t.Response(verify_vote_extension=t.ResponseVerifyVoteExtension(
            status=t.ResponseVerifyVoteExtension.ACCEPT))
    return t.Response(exception=t.ResponseException(error=text))


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
