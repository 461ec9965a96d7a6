"""The verdict table and its digest, checked against SPEC §4's text literally."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from stepbatch.schema import VERDICT_SCHEMA
from stepbatch.verdicts import counts_by_code, verdict_digest


def verdicts(rows):
    columns = list(zip(*rows)) if rows else [[]] * 9
    return pa.Table.from_arrays([pa.array(list(c), f.type) for c, f in zip(columns, VERDICT_SCHEMA)],
                                schema=VERDICT_SCHEMA)


def test_the_table_has_specs_columns_in_order():
    assert VERDICT_SCHEMA.names == ["index", "account", "nonce", "triangle_id", "code", "message",
                                    "reward_micro", "click_number", "speed_mps"]


def test_digest_is_sha256_of_specs_text():
    table = verdicts([
        (0, "0xa", "n1", "t", "ACCEPTED", "m", 61, 3, 1.5),
        (1, "0xa", "n2", "t", "TOO_FAST", "m", 0, None, 99.0),
        (2, None, None, None, "INVALID_PAYLOAD", "m", 0, None, None),
        (3, "0xb", "n", "t", "ACCEPTED", "m", 1000000, 11, None),
    ])
    text = ("STEP-BATCH-VERDICTS-v1:round-42:4\n"
            "0:ACCEPTED:61:3\n"
            "1:TOO_FAST:0:\n"
            "2:INVALID_PAYLOAD:0:\n"
            "3:ACCEPTED:1000000:11\n")
    assert verdict_digest("round-42", table) == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_digest_of_an_empty_batch_and_a_unicode_batch_id():
    assert verdict_digest("", verdicts([])) == hashlib.sha256(b"STEP-BATCH-VERDICTS-v1::0\n").hexdigest()
    text = "STEP-BATCH-VERDICTS-v1:ár:1\n0:MORATORIUM:0:\n"
    table = verdicts([(0, "0xa", "n", "t", "MORATORIUM", "m", 0, None, 0.5)])
    assert verdict_digest("ár", table) == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_messages_speed_and_account_case_are_not_part_of_the_digest():
    one = verdicts([(0, "0xAB", "n", "t", "ACCEPTED", "one message", 4, 1, 1.0)])
    other = verdicts([(0, "0xab", "n", "t", "ACCEPTED", "another", 4, 1, 2.0)])
    assert verdict_digest("b", one) == verdict_digest("b", other)


def test_counts_are_by_code_name_in_check_order():
    import numpy as np

    assert list(counts_by_code(np.array([10, 0, 0, 6], np.uint8)).items()) == [
        ("ACCEPTED", 2), ("NONCE_REPLAY", 1), ("TOO_FAST", 1)]
