"""The strict ISO-8601 grammar (stepbatch.ingest.timestamps): epoch ms equal to what datetime gives, the
edges of the calendar and of the fraction, and every near miss refused."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepbatch.ingest.timestamps import parse_timestamp_parts, parse_timestamps
from tests.strategies import iso_timestamps


@given(st.lists(iso_timestamps(), min_size=1, max_size=50))
@settings(max_examples=40, deadline=None)
def test_timestamps_parse_to_the_epoch_ms_datetime_gives(cases):
    ts_ms, ok = parse_timestamps(pa.array([text for text, _ in cases]))
    assert ok.all()
    assert ts_ms.tolist() == [expected for _, expected in cases]


@pytest.mark.parametrize("text, expected_ms", [
    ("1970-01-01T00:00:00Z", 0),
    ("1969-12-31T23:59:59.999Z", -1),
    ("2025-10-05T12:29:33.0749999Z", 1_759_667_373_074),  # truncated, not rounded
    ("2025-10-05T12:29:33.9Z", 1_759_667_373_900),
    ("2025-10-05T14:29:33.074+02:00", 1_759_667_373_074),
    ("2025-10-05T12:29:33.074-00:00", 1_759_667_373_074),
    ("2025-10-06T12:28:33.074+23:59", 1_759_667_373_074),
    ("2000-02-29T00:00:00Z", 951_782_400_000),
    ("0001-01-01T00:00:00Z", -62_135_596_800_000),
    ("0001-01-01T00:30:00-01:00", -62_135_591_400_000),
    ("9999-12-31T23:59:59.999Z", 253_402_300_799_999),
    ("9999-12-31T23:59:59.999+23:59", 253_402_214_459_999),
])
def test_timestamp_edges(text, expected_ms):
    ts_ms, ok = parse_timestamps(pa.array([text]))
    assert ok.tolist() == [True] and ts_ms.tolist() == [expected_ms]


@pytest.mark.parametrize("text", [
    "2025-10-05T12:29:33", "2025-10-05T12:29:33.074", "2025-10-05 12:29:33Z", "2025-10-05t12:29:33Z",
    "2025-10-05T12:29:33z", "2025-10-05T12:29Z", "2025-10-05T12:29:33.Z", "2025-10-05T12:29:33.0123456789Z",
    "2025-10-05T12:29:33+0200", "2025-10-05T12:29:33+02", "2025-10-05T12:29:33+24:00",
    "2025-10-05T12:29:33+02:60", "2025-10-05T24:00:00Z", "2025-10-05T12:60:00Z", "2025-10-05T12:29:60Z",
    "2025-13-05T12:29:33Z", "2025-00-05T12:29:33Z", "2025-10-00T12:29:33Z", "2025-04-31T12:29:33Z",
    "1900-02-29T00:00:00Z", "2025-02-29T00:00:00Z", "0000-01-01T00:00:00Z", "0000-12-31T23:59:59.999Z",
    "0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59.999-00:01", "+2025-10-05T12:29:33Z", "25-10-05T12:29:33Z",
    "２０２５-10-05T12:29:33Z", "2025-10-05T12:29:33Z\n", " 2025-10-05T12:29:33Z", "", "now",
])
def test_timestamps_outside_the_grammar_are_refused(text):
    ts_ms, ok = parse_timestamps(pa.array([text, "2025-10-05T12:29:33Z"]))
    assert ok.tolist() == [False, True]
    assert ts_ms[1] == 1_759_667_373_000


def test_a_sliced_string_array_parses_its_own_rows():
    strings = pa.array(["garbage", "2025-10-05T12:29:33Z", "1970-01-01T00:00:01Z"]).slice(1)
    assert parse_timestamps(strings)[0].tolist() == [1_759_667_373_000, 1000]


def test_parts_tell_text_outside_the_grammar_from_a_date_that_does_not_exist():
    texts = pa.array(["2025-10-05 12:29:33Z", "2025-02-29T00:00:00Z", "2024-02-29T00:00:00Z", None])
    ts_ms, well_formed, possible = parse_timestamp_parts(texts)
    assert well_formed.tolist() == [False, True, True, False]
    assert possible.tolist() == [True, False, True, True]
    assert ts_ms.tolist() == [0, 0, 1_709_164_800_000, 0]


def test_a_chunked_array_parses_as_its_chunks_joined():
    chunked = pa.chunked_array([["1970-01-01T00:00:01Z"], ["bad", "1970-01-01T01:00:00+01:00"]])
    ts_ms, ok = parse_timestamps(chunked)
    assert ok.tolist() == [True, False, True] and ts_ms.tolist() == [1000, 0, 0]
