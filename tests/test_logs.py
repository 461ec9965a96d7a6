"""Logs that follow a proof (SPEC §11): JSON lines at LOG_LEVEL in LOG_FORMAT; a proof's request line
and its batch's line share the batch id; SENTRY_DSN reports a failed batch with its batch id and
proof ids to a (local, real) Sentry endpoint, and without it sentry-sdk is never imported."""

from __future__ import annotations

import gzip
import http.server
import io
import json
import logging
import subprocess
import sys
import threading

import httpx
import pytest

from stepbatch import logs
from tests.processes import ROOT, server_process, wait_until
from tests.strategies import ACCOUNT_KEYS
from tests.test_service import REGION, proof


@pytest.fixture
def log_lines():
    stream = io.StringIO()
    logs.configure(level="info", fmt="json", stream=stream, environ={})
    try:
        yield stream
    finally:
        root = logging.getLogger("stepbatch")
        for handler in [h for h in root.handlers if getattr(h, "_stepbatch", False)]:
            root.removeHandler(handler)
        root.propagate = True
        root.setLevel(logging.NOTSET)


def test_an_event_is_one_json_line_with_its_fields(log_lines):
    logs.event(logging.getLogger("stepbatch.service"), "batch", batch_id="serve-1-00000007", rows=3)
    logging.getLogger("stepbatch.service").debug("not at info")
    (line,) = log_lines.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "batch" and entry["batch_id"] == "serve-1-00000007" and entry["rows"] == 3
    assert entry["level"] == "info" and entry["logger"] == "stepbatch.service" and entry["ts"].endswith("+00:00")


def test_log_level_and_format_come_from_the_environment():
    stream = io.StringIO()
    try:
        logs.configure(stream=stream, environ={"LOG_LEVEL": "warning", "LOG_FORMAT": "text"})
        log = logging.getLogger("stepbatch.abci")
        logs.event(log, "block", height=5)
        logs.event(log, "commit_failed", logging.WARNING, height=6)
        (line,) = stream.getvalue().splitlines()
        assert "commit_failed" in line and "height=6" in line and not line.startswith("{")
        with pytest.raises(ValueError, match="LOG_FORMAT"):
            logs.configure(environ={"LOG_FORMAT": "xml"})
    finally:
        root = logging.getLogger("stepbatch")
        for handler in [h for h in root.handlers if getattr(h, "_stepbatch", False)]:
            root.removeHandler(handler)
        root.propagate = True
        root.setLevel(logging.NOTSET)


def test_request_ids_are_the_callers_when_plain_and_new_otherwise():
    assert logs.request_id("phone-42.a") == "phone-42.a"
    assert len(logs.request_id("has space")) == 32 and logs.request_id(None) != logs.request_id(None)


@pytest.mark.mongo
@pytest.mark.slow
def test_a_proofs_request_line_and_its_batch_line_share_the_batch_id(mongo_uri, mongo_db_name, mongo_store):
    mongo_store.declare(REGION)
    args = ["--mongodb-uri", mongo_uri, "serve", "--port", "0", "--db", mongo_db_name]
    with server_process(args, env={"LOG_FORMAT": "json", "LOG_LEVEL": "info"}) as service:
        with httpx.Client(base_url=service.url, timeout=60) as client:
            wait_until(lambda: client.get("/ready").status_code == 200, what="/ready")
            answer = client.post("/proof/submit", json=proof(ACCOUNT_KEYS[0]), headers={"X-Request-ID": "phone-req-42"})
            assert answer.status_code == 200, answer.text

            def entries():
                return [json.loads(line) for line in service.output.splitlines() if line.startswith("{")]

            request_line = wait_until(lambda: next((e for e in entries() if e.get("request_id") == "phone-req-42"),
                                                   None), what="the request's log line")
            assert request_line["event"] == "proof" and request_line["code"] == "ACCEPTED"
            batch_line = wait_until(lambda: next((e for e in entries() if e.get("event") == "batch"
                                                  and e.get("batch_id") == request_line["batch_id"]), None),
                                    what="the batch's log line")
            assert batch_line["rows"] >= 1 and batch_line["counts"]["ACCEPTED"] >= 1


class _SentryIngest(http.server.BaseHTTPRequestHandler):
    """What a Sentry server receives: each envelope's items, as JSON."""

    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        type(self).received.extend(json.loads(line) for line in body.splitlines() if line.startswith(b"{"))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_sentry_gets_a_failed_batch_with_its_ids_and_is_not_imported_without_a_dsn():
    _SentryIngest.received = []
    ingest = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SentryIngest)
    threading.Thread(target=ingest.serve_forever, daemon=True).start()
    try:
        dsn = f"http://publickey@127.0.0.1:{ingest.server_address[1]}/1"
        report = ("from stepbatch import logs\nlogs.configure()\n"
                  "logs.report_batch_failure(RuntimeError('commit failed'), 'serve-x-00000003', ['0xabc:n-1'])\n"
                  "logs.flush_error_tracking()\n")
        ran = subprocess.run([sys.executable, "-c", report], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={"SENTRY_DSN": dsn, "PATH": "/usr/bin:/bin"})
        assert ran.returncode == 0, ran.stderr
        events = [item for item in _SentryIngest.received if "exception" in item]
        assert events, _SentryIngest.received
        assert events[0]["tags"]["batch_id"] == "serve-x-00000003" and events[0]["tags"]["proof_id"] == "0xabc:n-1"
        assert events[0]["contexts"]["batch"]["proof_ids"] == ["0xabc:n-1"]
    finally:
        ingest.shutdown()
        ingest.server_close()

    absent = ("import sys\nfrom stepbatch import logs\nfrom stepbatch.service import app\nlogs.configure()\n"
              "logs.report_batch_failure(RuntimeError('x'), 'b', [])\nassert 'sentry_sdk' not in sys.modules\n")
    ran = subprocess.run([sys.executable, "-c", absent], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin"})
    assert ran.returncode == 0, ran.stderr
