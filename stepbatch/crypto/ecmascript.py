"""ECMAScript `Number.prototype.toString()` for doubles, the number format of the canonical message.

The phone builds the message in JavaScript, so lat/lon/accuracy must print exactly as V8 prints
them (ECMA-262 Number::toString): shortest round-trip digits, integers without ".0", plain decimal
notation for 1e-6 <= |x| < 1e21 and exponent form (`1e-7`, `1.5e+21`) outside it, `-0` as `0`.
Python's `repr` picks the same digits but a different notation; Arrow's float64 -> string cast uses
the same digits and notation as V8 except for -0, non-finite values and a narrower decimal range,
so the column path keeps Arrow's text and re-formats only the rows where the two can differ.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# ECMA-262: decimal notation while -6 < n <= 21, n being the decimal exponent of the shortest digits
# (value = 0.d1d2...dk × 10^n); for doubles that is exactly float("1e-6") <= |x| < 1e21.
_JS_DECIMAL_LOW = float("1e-6")
_JS_DECIMAL_HIGH = float("1e21")


def number_to_string(x: float) -> str:
    """ECMAScript Number::toString(x) (radix 10) of the double `x`."""
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    digits, n = _shortest_digits(abs(x))
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    exponent = n - 1
    exponent_text = ("e+" if exponent >= 0 else "e-") + str(abs(exponent))
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return sign + mantissa + exponent_text


def _shortest_digits(x: float) -> tuple[str, int]:
    """(d1d2...dk, n) with x = 0.d1d2...dk × 10^n, no leading or trailing zero digits, for x > 0.

    `repr` gives the shortest digit string that round-trips (the same choice as ECMA-262's
    "k as small as possible", nearest to x on a tie); only its layout needs undoing.
    """
    mantissa, _, exponent = repr(x).partition("e")
    whole, _, fraction = mantissa.partition(".")
    all_digits = whole + fraction
    significant = all_digits.lstrip("0")
    n = len(whole) + (int(exponent) if exponent else 0) - (len(all_digits) - len(significant))
    return significant.rstrip("0"), n


def numbers_to_strings(values: pa.Array | pa.ChunkedArray | np.ndarray) -> pa.Array:
    """Number::toString of every element of a float64 column (nulls stay null), as a string array."""
    array = _as_float64_array(values)
    text = pc.cast(array, pa.string())
    x = array.to_numpy(zero_copy_only=False)
    disagree = _arrow_disagrees(x)
    if array.null_count:
        disagree &= array.is_valid().to_numpy(zero_copy_only=False)
    if not disagree.any():
        return text
    fixed = pa.array([number_to_string(v) for v in x[disagree].tolist()], pa.string())
    return pc.replace_with_mask(text, pa.array(disagree), fixed)


def _as_float64_array(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(np.asarray(values, dtype=np.float64))
    return values if values.type == pa.float64() else pc.cast(values, pa.float64())


def _arrow_disagrees(x: np.ndarray) -> np.ndarray:
    """Rows whose Arrow text can differ from ECMAScript's: -0, NaN/±inf, and the magnitudes where one
    prints decimal notation and the other exponent notation."""
    arrow_low, arrow_high = _arrow_decimal_range()
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(x)
        js_decimal = (magnitude >= _JS_DECIMAL_LOW) & (magnitude < _JS_DECIMAL_HIGH)
        arrow_decimal = (magnitude >= arrow_low) & (magnitude < arrow_high)
    negative_zero = (x == 0) & np.signbit(x)
    return (js_decimal != arrow_decimal) | negative_zero | ~np.isfinite(x)


@functools.cache
def _arrow_decimal_range() -> tuple[float, float]:
    """[low, high): the magnitudes this Arrow build prints in decimal notation.

    Measured rather than assumed: the bounds are settings of the formatter Arrow builds in, not a
    documented contract (this build's upper bound is 1e10). Both are powers of ten, and a double's
    shortest digits have exponent >= e exactly when the double is >= float("1e{e}"), so probing the
    powers finds them exactly.
    """
    exponents = range(-30, 31)
    powers = pa.array([float(f"1e{e}") for e in exponents], pa.float64())
    texts = pc.cast(powers, pa.string()).to_pylist()
    decimal = [e for e, text in zip(exponents, texts) if "e" not in text]
    return float(f"1e{min(decimal)}"), float(f"1e{max(decimal) + 1}")
