"""Structured logs (SPEC §11) and optional error tracking.

Every line is one JSON object (`LOG_FORMAT=json`, the default; `text` gives `key=value` lines for a
terminal) at `LOG_LEVEL` (info). A line names its `event` and carries the ids that tie a proof's
path together: `request_id` (from the caller's `X-Request-ID` header, else made up at arrival),
`batch_id` (the batch the proof joined) and, in front of a chain, `height` and `tx_hash`. So
`grep <request id>` finds the request's line, whose batch id finds the batch's line, whose height
finds the block.

`SENTRY_DSN` turns on error tracking with sentry-sdk: a batch that fails is reported with its batch
id and the ids (`account:nonce`) of its proofs. Without it, sentry-sdk is never imported.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import sys
import uuid

import orjson

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("json", "text")
PROOF_IDS_REPORTED = 100  # proof ids attached to an error report: enough to find the batch's rows
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# The attributes every LogRecord has; anything else on a record came from `extra` and is a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

_error_tracking = False


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": _iso(record.created), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage(), **fields_of(record)}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={value}" for key, value in fields_of(record).items())
        line = f"{_iso(record.created)} {record.levelname.lower():<7} {record.name}: {record.getMessage()} {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


def fields_of(record: logging.LogRecord) -> dict:
    return {key: value for key, value in vars(record).items()
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_")}


def configure(level: str | None = None, fmt: str | None = None, stream=None, environ=None) -> None:
    """Send the `stepbatch` loggers' lines to `stream` (stderr) in `fmt` at `level`, which default to
    LOG_FORMAT and LOG_LEVEL; then turn on error tracking when SENTRY_DSN is set. Idempotent."""
    env = os.environ if environ is None else environ
    level = (level or env.get("LOG_LEVEL") or "info").lower()
    fmt = (fmt or env.get("LOG_FORMAT") or "json").lower()
    if level not in LEVELS:
        raise ValueError(f"LOG_LEVEL must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, got {fmt!r}")
    root = logging.getLogger("stepbatch")
    for handler in [h for h in root.handlers if getattr(h, "_stepbatch", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._stepbatch = True
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("stepbatch.service", "stepbatch.abci"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    # Our lines are complete where our handler writes them; the CLI's one-line stderr format is for
    # other libraries.
    root.propagate = False
    if env.get("SENTRY_DSN"):
        start_error_tracking(env["SENTRY_DSN"], env.get("SENTRY_ENVIRONMENT"))


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields) -> None:
    """Log `name` with `fields` as the line's own keys."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"event": name, **fields})


def request_id(header: str | None) -> str:
    """The caller's X-Request-ID when it is a plain id, else a new one."""
    if header and _REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


def start_error_tracking(dsn: str, environment: str | None = None) -> None:
    global _error_tracking
    import sentry_sdk

    sentry_sdk.init(dsn=dsn, environment=environment, send_default_pii=False, traces_sample_rate=0.0)
    _error_tracking = True


def report_batch_failure(err: BaseException, batch_id: str, proof_ids=(), **context) -> None:
    """Send a failed batch to error tracking (when it is on) with its batch id and proof ids."""
    if not _error_tracking:
        return
    import sentry_sdk

    proof_ids = list(proof_ids)
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("batch_id", batch_id)
        if proof_ids:
            scope.set_tag("proof_id", proof_ids[0])
        scope.set_context("batch", {"batch_id": batch_id, "proofs": len(proof_ids),
                                    "proof_ids": proof_ids[:PROOF_IDS_REPORTED], **context})
        sentry_sdk.capture_exception(err)


def flush_error_tracking(timeout_s: float = 5.0) -> None:
    if _error_tracking:
        import sentry_sdk

        sentry_sdk.flush(timeout=timeout_s)


def _iso(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.timezone.utc).isoformat(timespec="milliseconds")
