"""Number formatting equals JavaScript's `String(x)` as node prints it, on both the scalar and the
column path."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess

import numpy as np
import pyarrow as pa
import pytest

from stepbatch.crypto.ecmascript import number_to_string, numbers_to_strings

SPEC_EXAMPLES = {
    5.0: "5", -180.0: "-180", 1e-7: "1e-7", -1.5e-7: "-1.5e-7", 1e21: "1e+21", -0.0: "0",
    1e-6: "0.000001", 47.4979123456789: "47.4979123456789", 1e15: "1000000000000000",
    1.5e300: "1.5e+300", float("nan"): "NaN", float("inf"): "Infinity", float("-inf"): "-Infinity",
}

# node reads the doubles as big-endian bit patterns, so no decimal text stands between the two sides.
_NODE_PROGRAM = """
const bits = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const buffer = Buffer.alloc(8);
process.stdout.write(JSON.stringify(bits.map(h => { buffer.write(h, 'hex'); return String(buffer.readDoubleBE(0)); })));
"""


def awkward_doubles() -> np.ndarray:
    """Thousands of doubles covering every branch of Number::toString and Arrow's disagreements."""
    rng = np.random.default_rng(20251005)
    random_bits = rng.integers(0, 2**64, 4000, dtype=np.uint64).view(np.float64)
    decimals = np.array([round(v, int(d)) for v, d in zip(rng.uniform(-200, 200, 2000),
                                                           rng.integers(0, 12, 2000))])
    integers = rng.integers(-10**16, 10**16, 1000).astype(np.float64)
    powers = np.array([float(f"1e{e}") for e in range(-30, 31)])
    neighbours = np.concatenate([powers, np.nextafter(powers, 0), np.nextafter(powers, np.inf)])
    wide_range = 10.0 ** rng.uniform(-12, 25, 2000) * rng.choice([-1.0, 1.0], 2000)
    big_integers = np.floor(10.0 ** rng.uniform(15, 21, 500))
    specials = np.array([0.0, -0.0, 1e-7, 1e21, 1e-6, 1e15, 1e20, 5e-324, -5e-324,
                         2.2250738585072014e-308, 2.225073858507201e-308, 1.7976931348623157e308,
                         -1.7976931348623157e308, 2.0**53, 0.1, 1 / 3, np.nan, np.inf, -np.inf])
    return np.concatenate([random_bits, decimals, integers, neighbours, -neighbours, wide_range,
                           big_integers, specials])


@pytest.fixture(scope="module")
def node_strings() -> tuple[np.ndarray, list[str]]:
    """(doubles, node's String(x) of each), from one node process."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: no JavaScript engine to compare Number::toString with")
    values = awkward_doubles()
    bits = [struct.pack(">d", value).hex() for value in values.tolist()]
    completed = subprocess.run([node, "-e", _NODE_PROGRAM], input=json.dumps(bits),
                               capture_output=True, text=True, check=True, timeout=60)
    return values, json.loads(completed.stdout)


def test_scalar_formatting_equals_node(node_strings):
    values, expected = node_strings
    mismatches = [(v, e, number_to_string(v)) for v, e in zip(values.tolist(), expected)
                  if number_to_string(v) != e]
    assert mismatches == []


def test_column_formatting_equals_node(node_strings):
    values, expected = node_strings
    assert numbers_to_strings(values).to_pylist() == expected


def test_column_formatting_equals_node_on_a_sliced_chunked_column_with_nulls(node_strings):
    values, expected = node_strings
    with_nulls = pa.array(values, mask=np.arange(len(values)) % 5 == 0)
    chunked = pa.chunked_array([with_nulls[3:1000], with_nulls[1000:]])
    expected_with_nulls = [None if i % 5 == 0 else e for i, e in enumerate(expected)][3:]
    assert numbers_to_strings(chunked).to_pylist() == expected_with_nulls


@pytest.mark.parametrize("value,text", SPEC_EXAMPLES.items())
def test_spec_examples_format_like_javascript(value, text):
    assert number_to_string(value) == text
    assert numbers_to_strings(np.array([value])).to_pylist() == [text]


def test_integer_columns_are_formatted_as_doubles():
    assert numbers_to_strings(pa.array([10, -90, 0], pa.int64())).to_pylist() == ["10", "-90", "0"]
