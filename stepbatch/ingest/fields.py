"""The field rules of SPEC §2 over whole columns: the one place a proof's fields are validated.

Ingest hands each field over as a `Column`: its values in the PROOF_SCHEMA type, plus, for values of
the wrong type, why they were refused (`coerce_arrow` for typed Arrow columns, `coerce_json` for the
Python objects of a JSON document or a list of dicts). `check_fields` then applies the rules in
this order, the first failure giving the row's `payload_error`:

    version, account, triangleId, lat, lon, accuracy, timestamp, nonce, signature, received_at

and within one field: missing (absent or null), wrong type, then the value rules. Messages start
with the field's name as the API shape spells it (`triangleId`); those of `triangleId` and
`signature` values are the ones `mesh_ids.decode_ids` and `hexcodec.parse_signatures` give. `version`
need only be a string: another version is UNSUPPORTED_VERSION, decided later.

Times (`timestamp`, and `received_at` when it is a string) must follow the strict ISO-8601 grammar
of `stepbatch.ingest.timestamps`; a text outside it and a date or time that does not exist get distinct
messages.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import numbers
import re
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.crypto import hexcodec
from stepbatch.ingest import timestamps
from stepbatch.ingest.timestamps import parse_timestamps
from stepbatch.mesh import ids as mesh_ids

FIELD_ORDER = ("version", "account", "triangle_id", "lat", "lon", "accuracy", "timestamp", "nonce",
               "signature", "received_at")
STRING_FIELDS = frozenset({"version", "account", "triangle_id", "timestamp", "nonce", "signature"})
NUMBER_FIELDS = frozenset({"lat", "lon", "accuracy"})
NONCE_MAX_CHARS = 128
_RANGES = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0)}
_LABELS = {"triangle_id": "triangleId"}
_ACCOUNT_RE = r"^0x[0-9a-fA-F]{40}$"
_QUOTE_CHARS = 64
_CONTROL_RE = "[\x00-\x1f\x7f]"
_RECEIVED_AT_EXPECTED = "received_at: expected an ISO-8601 time with a zone, a timestamp or epoch ms"


def _label(field: str) -> str:
    return _LABELS.get(field, field)


@dataclasses.dataclass(frozen=True)
class Column:
    """One field over a batch: values in the PROOF_SCHEMA type (null where absent or refused) and,
    where a value was present but of the wrong type, the message saying so."""

    values: pa.Array | pa.ChunkedArray
    type_error: pa.Array | pa.ChunkedArray | None = None


class FieldChecks(NamedTuple):
    ts_ms: pa.Array  # int64 epoch ms, null where the timestamp is missing or malformed
    triangle_key: pa.Array  # int64 packed id, null where the id is missing or not canonical
    payload_error: pa.Array  # string: the first rule a row breaks, null for a well-formed row


# ---------------------------------------------------------------- coercion of typed Arrow columns

def coerce_arrow(field: str, column: pa.Array | pa.ChunkedArray | None, num_rows: int) -> Column:
    """`column` (any Arrow type, or None when the source lacks it) as the field's PROOF_SCHEMA type."""
    if column is None:
        return Column(pa.nulls(num_rows, _target_type(field)))
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_null(kind):
        return Column(pa.nulls(num_rows, _target_type(field)))
    if field == "received_at":
        return _coerce_received_at(column)
    if field in STRING_FIELDS and _is_string(kind):
        return Column(column.cast(pa.string()))
    if field in NUMBER_FIELDS and pa.types.is_floating(kind) and kind != pa.float64():
        # The phone signed the digits of a double; a narrower float cannot give them back.
        width = {pa.float16(): "float16", pa.float32(): "float32"}.get(kind, str(kind))
        return _refused(column, field, f"{_label(field)}: expected a float64 column ({width} keeps too few "
                                       f"digits to match what was signed), got ")
    if field in NUMBER_FIELDS and (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                                   or pa.types.is_decimal(kind)):
        return Column(column.cast(pa.float64(), safe=False))
    expected = "a string" if field in STRING_FIELDS else "a JSON number"
    return _refused(column, field, f"{_label(field)}: expected {expected}, got ")


def _coerce_received_at(column: pa.Array | pa.ChunkedArray) -> Column:
    column = _combined(column)
    kind = column.type
    target = pa.timestamp("ms", tz="UTC")
    if pa.types.is_timestamp(kind) or pa.types.is_integer(kind):
        # Naive timestamps are taken as UTC; finer units are floored to whole milliseconds.
        per_ms = {"s": None, "ms": 1, "us": 1_000, "ns": 1_000_000}[kind.unit] \
            if pa.types.is_timestamp(kind) else 1
        raw = np.asarray(column.cast(pa.int64()).fill_null(0), np.int64)
        ms = raw * 1000 if per_ms is None else raw // per_ms
        return Column(pa.array(ms, target, mask=np.asarray(column.is_null())))
    if _is_string(kind):
        strings = column.cast(pa.string())
        ts_ms, ok = parse_timestamps(strings)
        present = np.asarray(strings.is_valid())
        refused = present & ~ok
        error = None
        if refused.any():
            error = _scatter(len(strings), np.flatnonzero(refused), _join(
                f"{_RECEIVED_AT_EXPECTED}, got ", _describe_arrow(strings.filter(pa.array(refused)))))
        return Column(pa.array(ts_ms, target, mask=~(present & ok)), error)
    return _refused(column, "received_at", f"{_RECEIVED_AT_EXPECTED}, got ")


def _refused(column: pa.Array | pa.ChunkedArray, field: str, prefix: str) -> Column:
    """Every present value refused, the message naming the type (and the value, where short)."""
    column = _combined(column)
    present = np.asarray(column.is_valid())
    rows = np.flatnonzero(present)
    error = _scatter(len(column), rows, _join(prefix, _describe_arrow(column.filter(pa.array(present)))))
    return Column(pa.nulls(len(column), _target_type(field)), error)


def _describe_arrow(values: pa.Array) -> pa.Array:
    kind = values.type
    if pa.types.is_boolean(kind):
        return pc.if_else(values, "boolean true", "boolean false")
    if _is_string(kind):
        return _join("string ", _quoted(values.cast(pa.string())))
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return _join("number ", values.cast(pa.string()))
    return pa.array([str(kind)] * len(values), pa.string())


# ---------------------------------------------------------------- coercion of JSON values

def coerce_json(field: str, values: Sequence) -> Column:
    """Python values as `json.loads` gives them (None where absent) as the field's type.

    Per value only where the column holds something other than the expected Python type, so a
    well-typed column costs one pass over the list.
    """
    kinds = set(map(type, values))
    if field == "received_at":
        return _coerce_json_received_at(values)
    if field in STRING_FIELDS:
        if kinds <= {str, type(None)}:
            return Column(pa.array(values, pa.string()))
        accepted = [v if isinstance(v, str) else None for v in values]
        errors = [None if v is None or isinstance(v, str)
                  else f"{_label(field)}: expected a string, got {describe_json(v)}" for v in values]
        return Column(pa.array(accepted, pa.string()), pa.array(errors, pa.string()))
    if kinds <= {float, int, type(None)}:
        try:
            return Column(pa.array(values, pa.float64()))
        except pa.ArrowInvalid:  # an integer a double cannot hold exactly: converted one by one
            pass
    accepted, errors = [], []
    for value in values:
        if value is None or (isinstance(value, numbers.Real) and not _is_bool(value)):
            accepted.append(None if value is None else _to_float(value))
            errors.append(None)
        else:
            accepted.append(None)
            errors.append(f"{_label(field)}: expected a JSON number, got {describe_json(value)}")
    error_array = pa.array(errors, pa.string())
    return Column(pa.array(accepted, pa.float64()), error_array if error_array.null_count < len(errors)
                  else None)


def _coerce_json_received_at(values: Sequence) -> Column:
    if set(map(type, values)) <= {str, type(None)}:
        return _coerce_received_at(pa.array(values, pa.string()))
    strings = pa.array([v if isinstance(v, str) else None for v in values], pa.string())
    parsed_ms, parsed = parse_timestamps(strings)
    ms = np.zeros(len(values), np.int64)
    present = np.zeros(len(values), bool)
    errors: list[str | None] = [None] * len(values)
    for row, value in enumerate(values):
        if isinstance(value, str) and parsed[row]:
            ms[row], present[row] = parsed_ms[row], True
        elif isinstance(value, numbers.Integral) and not _is_bool(value) and abs(value) < 2**62:
            ms[row], present[row] = int(value), True
        elif isinstance(value, dt.datetime):
            ms[row], present[row] = timestamps.epoch_ms(value), True
        elif value is not None:
            errors[row] = f"{_RECEIVED_AT_EXPECTED}, got {describe_json(value)}"
    return Column(pa.array(ms, pa.timestamp("ms", tz="UTC"), mask=~present),
                  pa.array(errors, pa.string()) if any(errors) else None)



def describe_json(value) -> str:
    """A JSON value in a message: its JSON type and, for scalars, the value (strings shortened)."""
    if value is None:
        return "null"
    if _is_bool(value):
        return "boolean true" if value else "boolean false"
    if isinstance(value, str):
        text = re.sub(_CONTROL_RE, "?", value)
        return f"string '{text[:_QUOTE_CHARS]}{'…' if len(text) > _QUOTE_CHARS else ''}'"
    if isinstance(value, numbers.Real):
        return f"number {value}"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _to_float(value) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer literal beyond the double range: as JSON.parse reads it
        return float("inf") if value > 0 else float("-inf")


# ---------------------------------------------------------------- the rules

def check_fields(columns: Mapping[str, Column], row_error: pa.Array | None = None) -> FieldChecks:
    """Apply the §2 rules; `row_error` (a whole-row problem, e.g. a line that is not JSON) comes first."""
    num_rows = len(columns["version"].values)
    failures = _Failures(num_rows)
    if row_error is not None:
        failures.add(_valid(row_error), lambda rows: row_error.take(rows))
    ts_ms = triangle_key = None
    for field in FIELD_ORDER:
        column = columns[field]
        values = column.values
        present = _valid(values)
        if field != "received_at":
            refused = np.zeros(num_rows, bool) if column.type_error is None \
                else _valid(column.type_error)
            failures.add(~present & ~refused, _constant(f"missing field '{_label(field)}'"))
        if column.type_error is not None:
            failures.add(_valid(column.type_error), lambda rows, e=column.type_error: e.take(rows))
        rule = _VALUE_RULES.get(field)
        if rule is not None:
            rule(failures, values, present)
        if field == "triangle_id":
            # mesh's messages already name the field: "triangleId checksum does not match".
            decoded = mesh_ids.decode_ids(values)
            valid = present & np.asarray(decoded.valid, bool)
            errors = _as_string_array(decoded.errors)
            failures.add(present & ~valid, lambda rows: errors.take(rows))
            triangle_key = pa.array(np.asarray(decoded.keys, np.int64), pa.int64(), mask=~valid)
        elif field == "timestamp":
            parsed_ms, ok = _check_timestamps(failures, values, present)
            ts_ms = pa.array(parsed_ms, pa.int64(), mask=~(present & ok))
        elif field == "signature":
            # crypto's messages already name the field: "signature: expected 65 bytes …".
            parsed = hexcodec.parse_signatures(values)
            errors = _as_string_array(parsed.errors)
            failures.add(present & ~np.asarray(parsed.valid, bool), lambda rows: errors.take(rows))
    return FieldChecks(ts_ms=ts_ms, triangle_key=triangle_key, payload_error=failures.messages())


def _check_account(failures: "_Failures", values: pa.Array, present: np.ndarray) -> None:
    ok = _true(pc.match_substring_regex(values, _ACCOUNT_RE))
    failures.add(present & ~ok, lambda rows: _join(
        "account: expected 0x followed by 40 hex digits, got ", _quoted(values.take(rows))))


def _check_number(field: str) -> Callable:
    def check(failures: "_Failures", values: pa.Array, present: np.ndarray) -> None:
        numbers_ = np.asarray(values.fill_null(0.0), np.float64)
        finite = np.isfinite(numbers_)
        failures.add(present & ~finite, lambda rows: _join(
            f"{field}: expected a finite number, got ", values.take(rows).cast(pa.string())))
        if field in _RANGES:
            low, high = _RANGES[field]
            with np.errstate(invalid="ignore"):
                inside = (numbers_ >= low) & (numbers_ <= high)
            failures.add(present & ~inside, lambda rows: _join(
                f"{field}: expected a value in [{low:g}, {high:g}], got ",
                values.take(rows).cast(pa.string())))
    return check


def _check_nonce(failures: "_Failures", values: pa.Array, present: np.ndarray) -> None:
    # Characters as JavaScript counts them (`nonce.length`, UTF-16 code units), as the original
    # server and its clients do: a character beyond U+FFFF counts twice.
    astral = pc.count_substring_regex(values, "[\\x{10000}-\\x{10FFFF}]")
    chars = np.asarray(pc.add(pc.utf8_length(values), astral).fill_null(0), np.int64)
    failures.add(present & (chars == 0), _constant("nonce: expected a non-empty string"))
    failures.add(present & (chars > NONCE_MAX_CHARS), lambda rows: _join(
        f"nonce: expected at most {NONCE_MAX_CHARS} characters (UTF-16 code units, as JavaScript counts), got ",
        pa.array(chars[rows]).cast(pa.string())))


def _check_timestamps(failures: "_Failures", values: pa.Array, present: np.ndarray):
    ts_ms, well_formed, possible = timestamps.parse_timestamp_parts(values)
    failures.add(present & ~well_formed, lambda rows: _join(
        f"timestamp: expected {timestamps.GRAMMAR}, got ", _quoted(values.take(rows))))
    failures.add(present & ~possible, lambda rows: _join(
        "timestamp: no such date or time in the UTC years 0001-9999, got ", _quoted(values.take(rows))))
    return ts_ms, well_formed & possible


_VALUE_RULES = {"account": _check_account, "lat": _check_number("lat"), "lon": _check_number("lon"),
                "accuracy": _check_number("accuracy"), "nonce": _check_nonce}


# ---------------------------------------------------------------- message assembly

class _Failures:
    """First failure per row: rules are added in order and a row keeps the first one it breaks.

    Messages are built only for the rows that newly fail, then scattered once at the end.
    """

    def __init__(self, num_rows: int):
        self._open = np.ones(num_rows, bool)
        self._rows: list[np.ndarray] = []
        self._messages: list[pa.Array] = []

    def add(self, failing: np.ndarray, messages: Callable[[np.ndarray], pa.Array]) -> None:
        """Rows in `failing` that passed every earlier rule fail here, with `messages(rows)`."""
        rows = np.flatnonzero(failing & self._open)
        if len(rows):
            self._open[rows] = False
            self._rows.append(rows)
            self._messages.append(_combined(messages(rows)).cast(pa.string()))

    def messages(self) -> pa.Array:
        if not self._rows:
            return pa.nulls(len(self._open), pa.string())
        rows = np.concatenate(self._rows)
        order = np.argsort(rows, kind="stable")
        return _scatter(len(self._open), rows[order],
                        pa.concat_arrays(self._messages).take(order))


def _scatter(num_rows: int, rows: np.ndarray, messages: pa.Array) -> pa.Array:
    """A string array of nulls with `messages` at `rows` (ascending)."""
    mask = np.zeros(num_rows, bool)
    mask[rows] = True
    return pc.replace_with_mask(pa.nulls(num_rows, pa.string()), pa.array(mask), messages)


def _constant(message: str) -> Callable[[np.ndarray], pa.Array]:
    return lambda rows: pa.array([message], pa.string()).take(np.zeros(len(rows), np.int64))


def _join(prefix: str, values: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(prefix, values, "")


def _quoted(strings: pa.Array) -> pa.Array:
    """'value' for a message, control characters shown as '?', long values shortened with '…'."""
    text = pc.replace_substring_regex(strings, _CONTROL_RE, "?")
    short = pc.utf8_slice_codeunits(text, 0, _QUOTE_CHARS)
    long_ = pc.greater(pc.utf8_length(text), _QUOTE_CHARS)
    shown = pc.if_else(long_, pc.binary_join_element_wise(short, "…", ""), text)
    return pc.binary_join_element_wise("'", shown, "'", "")


def _as_string_array(errors) -> pa.Array:
    return errors if isinstance(errors, pa.Array) else pa.array(errors, pa.string())


def _combined(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _valid(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(array.is_valid())


def _true(mask: pa.Array) -> np.ndarray:
    return np.asarray(mask.fill_null(False), bool)


def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _target_type(field: str) -> pa.DataType:
    if field == "received_at":
        return pa.timestamp("ms", tz="UTC")
    return pa.float64() if field in NUMBER_FIELDS else pa.string()
