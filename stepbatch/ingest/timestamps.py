"""The strict ISO-8601 grammar of SPEC §2's times, parsed over whole string columns.

A time (`timestamp`, and `received_at` when it is a string) must match, exactly and in full,

    YYYY-MM-DDTHH:MM:SS[.F](Z|+hh:mm|-hh:mm)

with ASCII digits, an upper-case `T` and `Z`, F of 1 to 9 digits (truncated to milliseconds, not
rounded), a zone offset of at most 23:59, a calendar date of the proleptic Gregorian calendar
(leap years included), hour ≤ 23, minute ≤ 59 and second ≤ 59 (no leap second), and, once its
offset is applied, a UTC time in the years 0001–9999: the range that both BSON dates (Python's
datetime, which the database driver uses) and ECMAScript `Date` hold, so whatever validation accepts
can be stored. Anything else — a space for `T`, a missing zone, `24:00:00`, 2025-02-29,
`0000-12-31T23:59:59Z`, `9999-12-31T23:59:59-01:00` — is refused.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

GRAMMAR = "ISO-8601 YYYY-MM-DDTHH:MM:SS[.fraction] with Z or ±hh:mm"
_TIMESTAMP_RE = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"
# 0001-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z in epoch milliseconds.
MIN_MS = -62_135_596_800_000
MAX_MS = 253_402_300_799_999
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)


def parse_timestamps(strings: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(epoch ms int64, ok bool) for a string array; ok is False for null, malformed or
    impossible times (see the module docstring), and their ms is 0."""
    ts_ms, well_formed, possible = parse_timestamp_parts(strings)
    return ts_ms, well_formed & possible


def parse_timestamp_parts(strings: pa.Array | pa.ChunkedArray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epoch ms, well formed, a possible date and time) — `possible` is True where not well formed,
    so that a caller can tell a text outside the grammar from a date that does not exist.

    The grammar fixes the position of every field but the fraction, so the digits are gathered
    straight from the Arrow data buffer.
    """
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    strings = strings.cast(pa.string())
    num_rows = len(strings)
    ok = np.asarray(pc.match_substring_regex(strings, _TIMESTAMP_RE).fill_null(False), bool)
    if not ok.any():
        return np.zeros(num_rows, np.int64), ok, np.ones(num_rows, bool)
    offsets = np.frombuffer(strings.buffers()[1], np.int32, num_rows + 1, strings.offset * 4)
    data = np.frombuffer(strings.buffers()[2], np.uint8)
    # Rows that did not match read the digits of the first row that did, and are discarded.
    first = int(np.argmax(ok))
    start = np.where(ok, offsets[:-1], offsets[first]).astype(np.int64)
    end = np.where(ok, offsets[1:], offsets[first + 1]).astype(np.int64)

    def number(position, width):
        value = np.zeros(num_rows, np.int64)
        for k in range(width):
            value = value * 10 + data[position + k] - 48
        return value

    year, month, day = number(start, 4), number(start + 5, 2), number(start + 8, 2)
    hour, minute, second = number(start + 11, 2), number(start + 14, 2), number(start + 17, 2)
    utc = data[end - 1] == ord("Z")
    zone_chars = np.where(utc, 1, 6)
    zone_sign = np.where(data[end - 6] == ord("-"), -1, 1)
    zone_hour = np.where(utc, 0, number(np.maximum(end - 5, 0), 2))
    zone_minute = np.where(utc, 0, number(np.maximum(end - 2, 0), 2))
    fraction_digits = np.maximum(end - zone_chars - start - 20, 0)  # digits after the '.'
    millis = np.zeros(num_rows, np.int64)
    for k in range(3):
        has_digit = fraction_digits > k
        digit = data[np.where(has_digit, start + 20 + k, start)].astype(np.int64) - 48
        millis = millis * 10 + np.where(has_digit, digit, 0)

    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _MONTH_DAYS[np.clip(month, 1, 12)] + ((month == 2) & leap)
    possible = ~ok | ((month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
                      & (hour <= 23) & (minute <= 59) & (second <= 59) & (zone_hour <= 23)
                      & (zone_minute <= 59))
    seconds = (_days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second
               - zone_sign * (zone_hour * 3_600 + zone_minute * 60))
    ms = seconds * 1000 + millis
    possible &= ~ok | ((ms >= MIN_MS) & (ms <= MAX_MS))
    return np.where(ok & possible, ms, 0), ok, possible


def _days_from_civil(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm, years ≥ 0)."""
    year = year - (month <= 2)
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * np.where(month > 2, month - 3, month + 9) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def epoch_ms(moment: dt.datetime | int) -> int:
    """Epoch milliseconds of a datetime (a naive one is read as UTC) or of an integer already in ms."""
    if isinstance(moment, dt.datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        return (moment - _EPOCH) // dt.timedelta(milliseconds=1)
    if isinstance(moment, (int, np.integer)) and not isinstance(moment, bool):
        return int(moment)
    raise TypeError(f"expected a datetime or epoch milliseconds, got {type(moment).__name__}")
