"""The §2 field rules (stepbatch.ingest.fields): one test per rule with its message, the rule order, the
two coercion paths (typed Arrow columns and JSON values) and the messages of bad timestamps."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepbatch.ingest.fields import (
    FIELD_ORDER,
    check_fields,
    coerce_arrow,
    coerce_json,
    describe_json,
)
from stepbatch.mesh import ids as mesh_ids
from tests.conftest import load_vectors
from tests.strategies import json_non_numbers

TRIANGLE_ID = "STEP-TRI-v1:D5-01230000000000000000-W7Q"
SIGNATURE = "0x" + "ab" * 64 + "1b"
GOOD = {
    "version": "STEP-PROOF-v1", "account": "0x" + "a1" * 20, "triangle_id": TRIANGLE_ID,
    "lat": 47.4979, "lon": 19.0402, "accuracy": 10, "timestamp": "2025-10-05T12:29:33.074Z",
    "nonce": "n-1", "signature": SIGNATURE,
}


def json_checks(rows: list[dict]):
    """check_fields over flat JSON rows (a missing key is absent, as json.loads gives it)."""
    return check_fields({field: coerce_json(field, [row.get(field) for row in rows])
                         for field in FIELD_ORDER})


def error_of(**changes) -> str | None:
    row = {**GOOD, **changes}
    return json_checks([{k: v for k, v in row.items() if v is not _ABSENT}]).payload_error[0].as_py()


_ABSENT = object()


def test_a_well_formed_row_has_no_error_and_gets_its_derived_columns():
    checks = json_checks([GOOD])
    assert checks.payload_error.to_pylist() == [None]
    assert checks.ts_ms.to_pylist() == [1_759_667_373_074]
    assert checks.triangle_key.to_pylist() == [mesh_ids.key_of(TRIANGLE_ID)]


@pytest.mark.parametrize("field", [f for f in FIELD_ORDER if f != "received_at"])
@pytest.mark.parametrize("how", [_ABSENT, None])
def test_a_missing_or_null_field_is_named(field, how):
    name = "triangleId" if field == "triangle_id" else field
    assert error_of(**{field: how}) == f"missing field '{name}'"


@pytest.mark.parametrize("changes, message", [
    ({"version": 5}, "version: expected a string, got number 5"),
    ({"account": "0x12"}, "account: expected 0x followed by 40 hex digits, got '0x12'"),
    ({"account": "0X" + "a1" * 20}, "account: expected 0x followed by 40 hex digits, got '0X"
                                    + "a1" * 20 + "'"),
    ({"account": "0x" + "a1" * 20 + "0"}, "account: expected 0x followed by 40 hex digits, got '0x"
                                          + "a1" * 20 + "0'"),
    ({"account": "0x" + "g1" * 20}, "account: expected 0x followed by 40 hex digits, got '0x"
                                    + "g1" * 20 + "'"),
    ({"account": 12}, "account: expected a string, got number 12"),
    ({"triangle_id": TRIANGLE_ID[:-3] + "AAA"}, "triangleId checksum does not match"),
    ({"triangle_id": "STEP-TRI-v1:B3-12300000000000000000-FQG"},
     "triangleId is not canonical: path digits beyond the level must be 0"),
    ({"triangle_id": ["x"]}, "triangleId: expected a string, got array"),
    ({"lat": "47.5"}, "lat: expected a JSON number, got string '47.5'"),
    ({"lat": True}, "lat: expected a JSON number, got boolean true"),
    ({"lat": float("nan")}, "lat: expected a finite number, got nan"),
    ({"lat": float("-inf")}, "lat: expected a finite number, got -inf"),
    ({"lat": 90.0000001}, "lat: expected a value in [-90, 90], got 90.0000001"),
    ({"lat": -91}, "lat: expected a value in [-90, 90], got -91"),
    ({"lon": 180.5}, "lon: expected a value in [-180, 180], got 180.5"),
    ({"lon": {"deg": 1}}, "lon: expected a JSON number, got object"),
    ({"accuracy": "10"}, "accuracy: expected a JSON number, got string '10'"),
    ({"accuracy": float("inf")}, "accuracy: expected a finite number, got inf"),
    ({"accuracy": 10 ** 400}, "accuracy: expected a finite number, got inf"),
    ({"timestamp": "2025-10-05 12:29:33Z"}, "timestamp: expected ISO-8601 "
     "YYYY-MM-DDTHH:MM:SS[.fraction] with Z or ±hh:mm, got '2025-10-05 12:29:33Z'"),
    ({"timestamp": "2025-02-29T00:00:00Z"},
     "timestamp: no such date or time in the UTC years 0001-9999, got '2025-02-29T00:00:00Z'"),
    ({"timestamp": 1759667373074}, "timestamp: expected a string, got number 1759667373074"),
    ({"nonce": ""}, "nonce: expected a non-empty string"),
    ({"nonce": "é" * 129}, "nonce: expected at most 128 characters (UTF-16 code units, as JavaScript counts), got 129"),
    ({"nonce": "😀" * 65}, "nonce: expected at most 128 characters (UTF-16 code units, as JavaScript counts), got 130"),
    ({"nonce": 7}, "nonce: expected a string, got number 7"),
    ({"signature": "0xzz"},
     "signature: expected 65 bytes as 130 hex digits (0x optional), got 4 characters"),
    ({"received_at": "yesterday"}, "received_at: expected an ISO-8601 time with a zone, a "
                                   "timestamp or epoch ms, got string 'yesterday'"),
    ({"received_at": 1.5}, "received_at: expected an ISO-8601 time with a zone, a "
                           "timestamp or epoch ms, got number 1.5"),
])
def test_each_rule_gives_its_message(changes, message):
    assert error_of(**changes) == message


@pytest.mark.parametrize("changes", [
    {"version": "STEP-PROOF-v2"}, {"version": ""}, {"account": "0x" + "AB" * 20},
    {"lat": -90}, {"lat": 90.0}, {"lon": -180}, {"lon": 180}, {"lat": np.float32(1.5)},
    {"lat": np.int64(3)}, {"accuracy": -1}, {"accuracy": 1e9}, {"nonce": "é" * 128},
    {"signature": SIGNATURE[2:]}, {"received_at": 1_759_667_373_200},
    {"received_at": "2025-10-05T12:29:34+02:00"}, {"received_at": None},
])
def test_values_the_rules_allow_pass(changes):
    assert error_of(**changes) is None


@given(json_non_numbers, st.sampled_from(["lat", "lon", "accuracy"]))
@settings(max_examples=30, deadline=None)
def test_only_json_numbers_are_numbers(value_and_description, field):
    value, description = value_and_description
    assert error_of(**{field: value}) == f"{field}: expected a JSON number, got {description}"


_BREAKS = {  # field → a value breaking it; the expected messages come from error_of alone
    "version": 1, "account": "0x1", "triangle_id": "STEP-TRI-v2:x", "lat": "1", "lon": 200,
    "accuracy": float("nan"), "timestamp": "2025-13-01T00:00:00Z", "nonce": "",
    "signature": "0x00", "received_at": "soon",
}


@given(st.sets(st.sampled_from(FIELD_ORDER), min_size=1))
@settings(max_examples=60, deadline=None)
def test_the_first_broken_field_in_rule_order_wins(broken):
    first = next(field for field in FIELD_ORDER if field in broken)
    assert error_of(**{f: _BREAKS[f] for f in broken}) == error_of(**{first: _BREAKS[first]})


def test_a_row_error_comes_before_every_field_rule():
    columns = {field: coerce_json(field, [None, GOOD[field] if field in GOOD else None])
               for field in FIELD_ORDER}
    checks = check_fields(columns, row_error=pa.array(["not valid JSON", None]))
    assert checks.payload_error.to_pylist() == ["not valid JSON", None]


def test_extra_payload_fields_and_rows_in_a_batch_are_independent():
    rows = [GOOD, {**GOOD, "lat": "x"}, {**GOOD, "extra": [1, 2]}, GOOD]
    assert json_checks(rows).payload_error.to_pylist() == [
        None, "lat: expected a JSON number, got string 'x'", None, None]


def test_an_empty_batch_checks_to_empty_columns():
    checks = json_checks([])
    assert len(checks.payload_error) == len(checks.ts_ms) == len(checks.triangle_key) == 0


def test_long_or_control_character_values_are_shortened_and_kept_on_one_line():
    message = error_of(account="0x\n" + "z" * 100)
    assert message == "account: expected 0x followed by 40 hex digits, got '0x?" + "z" * 61 + "…'"
    assert describe_json("0x\n" + "z" * 100) == "string '0x?" + "z" * 61 + "…'"


# ---------------------------------------------------------------- typed Arrow columns

def arrow_error(field: str, column: pa.Array) -> list:
    columns = {f: coerce_json(f, [GOOD.get(f)] * len(column)) for f in FIELD_ORDER}
    columns[field] = coerce_arrow(field, column, len(column))
    return check_fields(columns).payload_error.to_pylist()


def test_a_string_column_where_a_number_belongs_is_refused_row_by_row_naming_the_type():
    assert arrow_error("lat", pa.array(["47.5", None])) == [
        "lat: expected a JSON number, got string '47.5'", "missing field 'lat'"]


def test_a_boolean_column_is_not_a_number_column():
    assert arrow_error("accuracy", pa.array([True, False])) == [
        "accuracy: expected a JSON number, got boolean true",
        "accuracy: expected a JSON number, got boolean false"]


def test_a_non_string_column_where_a_string_belongs_names_its_arrow_type():
    column = pa.array([1_759_667_373_074], pa.timestamp("ms"))
    assert arrow_error("timestamp", column) == ["timestamp: expected a string, got timestamp[ms]"]
    assert arrow_error("nonce", pa.array([5], pa.int32())) == ["nonce: expected a string, got number 5"]


@pytest.mark.parametrize("column", [
    pa.array([10, 20], pa.int16()), pa.array([10, 20], pa.uint64()), pa.array([10, 20], pa.decimal128(5, 1)),
])
def test_any_exact_numeric_column_is_numbers(column):
    coerced = coerce_arrow("accuracy", column, 2)
    assert coerced.type_error is None and coerced.values.to_pylist() == [10.0, 20.0]


@pytest.mark.parametrize("kind", [pa.float16(), pa.float32()])
def test_a_float_narrower_than_what_was_signed_is_refused(kind):
    column = pa.array([10, 20], pa.float32()).cast(kind)
    assert arrow_error("accuracy", column) == [
        f"accuracy: expected a float64 column ({'float16' if kind == pa.float16() else 'float32'} keeps "
        f"too few digits to match what was signed), got number {v}" for v in ("10", "20")]


@pytest.mark.parametrize("column", [
    pa.array([TRIANGLE_ID], pa.large_string()), pa.array([TRIANGLE_ID], pa.string_view()),
    pa.array([TRIANGLE_ID]).dictionary_encode(), pa.chunked_array([[TRIANGLE_ID]]),
])
def test_any_string_column_is_strings(column):
    assert arrow_error("triangle_id", column) == [None]


@pytest.mark.parametrize("column, expected_ms", [
    (pa.array([1_759_667_373_074]), 1_759_667_373_074),
    (pa.array([1_759_667_373_074_999], pa.timestamp("us")), 1_759_667_373_074),
    (pa.array([-1], pa.timestamp("us")), -1),
    (pa.array([1_759_667_373], pa.timestamp("s", tz="Europe/Budapest")), 1_759_667_373_000),
    (pa.array(["2025-10-05T12:29:33.074Z"]), 1_759_667_373_074),
])
def test_received_at_accepts_iso_text_timestamps_and_epoch_ms(column, expected_ms):
    coerced = coerce_arrow("received_at", column, 1)
    assert coerced.type_error is None
    assert coerced.values.type == pa.timestamp("ms", tz="UTC")
    assert coerced.values.cast(pa.int64()).to_pylist() == [expected_ms]


def test_received_at_datetimes_from_python_rows_are_taken_as_utc_when_naive():
    moment = dt.datetime(2025, 10, 5, 12, 29, 33, 74_000)
    coerced = coerce_json("received_at", [moment, moment.replace(tzinfo=dt.timezone.utc), 5])
    assert coerced.values.cast(pa.int64()).to_pylist() == [1_759_667_373_074] * 2 + [5]


# ---------------------------------------------------------------- conformance vectors

def test_conformance_signatures_are_payload_errors_exactly_when_malformed():
    vectors = load_vectors("signatures")
    rows = [{**{"triangle_id" if k == "triangleId" else k: v for k, v in vector["payload"].items()},
             "signature": vector["signature"]} for vector in vectors]
    errors = json_checks(rows).payload_error.to_pylist()
    for vector, error in zip(vectors, errors):
        if vector["expect"] == "malformed":
            assert error is not None and error.startswith("signature: "), vector["case"]
        elif abs(vector["payload"]["lat"]) > 90:
            # One tampered vector moved lat past the pole: SPEC §2's range rule (check 1) refuses
            # it before its signature (check 5) is looked at.
            assert error == f"lat: expected a value in [-90, 90], got {vector['payload']['lat']}"
        else:
            assert error is None, (vector["case"], error)


def test_conformance_ids_decode_to_keys_or_name_the_id_as_invalid():
    vectors = load_vectors("addressing")
    ids = [v["id"] for v in vectors["valid"]] + [v["id"] for v in vectors["invalid"]]
    checks = json_checks([{**GOOD, "triangle_id": triangle_id} for triangle_id in ids])
    valid_count = len(vectors["valid"])
    assert checks.payload_error.to_pylist()[:valid_count] == [None] * valid_count
    assert checks.triangle_key.to_pylist()[:valid_count] == [mesh_ids.key_of(v["id"])
                                                             for v in vectors["valid"]]
    for vector, error in zip(vectors["invalid"], checks.payload_error.to_pylist()[valid_count:]):
        assert error is not None and error.startswith(("triangleId", "missing field")), vector
    assert checks.triangle_key.to_pylist()[valid_count:] == [None] * len(vectors["invalid"])
