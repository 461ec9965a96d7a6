"""Canonical message, EIP-191 signatures and recovery: conformance vectors, a real wallet library
(eth-account) in both directions, and the column path against the scalar one."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from hypothesis import given, settings

from stepbatch import crypto
from stepbatch.crypto import eip191, hexcodec, recovery, secp256k1, signing
from tests.conftest import load_vectors
from tests.strategies import SECP256K1_ORDER, private_keys, proof_payloads

KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
PAYLOAD = {"version": "STEP-PROOF-v1", "account": "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23",
           "triangleId": "STEP-TRI-v1:D5-01230000000000000000-W7Q", "lat": 47.4979, "lon": -0.0,
           "accuracy": 1e-7, "timestamp": "2025-10-05T12:29:33.074Z", "nonce": "n-1|ü"}


def flat_table(payloads: list[dict], signatures: list[str | None]) -> pa.Table:
    return pa.table({
        "account": [p["account"] for p in payloads], "triangle_id": [p["triangleId"] for p in payloads],
        "lat": pa.array([p["lat"] for p in payloads], pa.float64()),
        "lon": pa.array([p["lon"] for p in payloads], pa.float64()),
        "accuracy": pa.array([p["accuracy"] for p in payloads], pa.float64()),
        "timestamp": [p["timestamp"] for p in payloads], "nonce": [p["nonce"] for p in payloads],
        "signature": pa.array(signatures, pa.string()),
    })


@pytest.fixture(scope="module")
def vectors():
    return load_vectors("signatures")


@pytest.fixture(scope="module")
def recoverer():
    with recovery.SignatureRecoverer(threads=2) as pool:
        yield pool


# --- conformance vectors -------------------------------------------------------------------

def test_canonical_message_equals_every_vector_byte_for_byte(vectors):
    assert [crypto.canonical_message(v["payload"]).encode() for v in vectors] == [
        v["message"].encode() for v in vectors]


def test_canonical_messages_column_equals_every_vector(vectors):
    table = flat_table([v["payload"] for v in vectors], [v["signature"] for v in vectors])
    assert eip191.canonical_messages(table).to_pylist() == [v["message"] for v in vectors]


def test_scalar_recovery_follows_every_vector(vectors):
    for vector in vectors:
        account = vector["payload"]["account"].lower()
        if vector["expect"] == "malformed":
            with pytest.raises(secp256k1.MalformedSignatureError):
                crypto.recover_address(vector["message"], vector["signature"])
            continue
        try:
            signer = crypto.recover_address(vector["message"], vector["signature"])
        except secp256k1.UnrecoverableSignatureError:
            signer = None
        assert (signer == account) == (vector["expect"] == "valid"), vector["case"]


def test_column_recovery_follows_every_vector(vectors, recoverer):
    table = flat_table([v["payload"] for v in vectors], [v["signature"] for v in vectors])
    parsed = hexcodec.parse_signatures(table.column("signature"))
    assert parsed.valid.tolist() == [v["expect"] != "malformed" for v in vectors]
    matches = recovery.check_signers(table, recoverer).matches
    assert matches.tolist() == [v["expect"] == "valid" for v in vectors]


def test_recover_addresses_column_equals_scalar_recovery(vectors, recoverer):
    messages = [v["message"] for v in vectors] + [None]
    signatures = [v["signature"] for v in vectors] + [vectors[0]["signature"]]
    expected = []
    for message, signature in zip(messages, signatures):
        try:
            expected.append(crypto.recover_address(message, signature) if message else None)
        except ValueError:
            expected.append(None)
    assert crypto.recover_addresses(messages, signatures, recoverer=recoverer).to_pylist() == expected
    assert crypto.recover_addresses(messages, signatures, threads=3).to_pylist() == expected


# --- interoperability with a wallet library -------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(private_keys, proof_payloads)
def test_sign_proof_recovers_with_eth_account(key, payload):
    signature = crypto.sign_proof(key, payload)
    assert re.fullmatch(r"0x[0-9a-f]{128}(1b|1c)", signature)
    message = crypto.canonical_message(payload)
    assert Account.recover_message(encode_defunct(text=message), signature=signature) == \
        Account.from_key(key).address


@settings(max_examples=25, deadline=None)
@given(private_keys, proof_payloads)
def test_eth_account_signatures_recover_with_recover_address(key, payload):
    message = crypto.canonical_message(payload)
    signed = Account.sign_message(encode_defunct(text=message), private_key=key)
    assert crypto.recover_address(message, signed.signature.hex()) == Account.from_key(key).address.lower()
    assert signing.address_of(key) == Account.from_key(key).address.lower()


def test_sign_proof_accepts_a_hex_private_key():
    assert crypto.sign_proof("0x" + KEY.hex(), PAYLOAD) == crypto.sign_proof(KEY, PAYLOAD)
    assert crypto.sign_proof(KEY.hex(), PAYLOAD) == crypto.sign_proof(KEY, PAYLOAD)


def test_batch_signatures_equal_sign_proof_and_recover_to_their_signers(recoverer):
    keys = [(i * 7919 + 1).to_bytes(32, "big") for i in range(40)]
    payloads = [{**PAYLOAD, "account": signing.address_of(k), "nonce": f"n{i}", "lat": i / 3}
                for i, k in enumerate(keys)]
    table = flat_table(payloads, [None] * len(payloads))
    digests = eip191.eip191_digests(eip191.canonical_messages(table))
    signatures = hexcodec.signatures_to_hex(signing.sign_digests(keys, digests, threads=3))
    assert signatures.to_pylist() == [crypto.sign_proof(k, p) for k, p in zip(keys, payloads)]
    signed = table.set_column(table.schema.get_field_index("signature"), "signature", signatures)
    assert recovery.check_signers(signed, recoverer).matches.all()


def test_batch_signing_names_the_first_invalid_private_key():
    keys = [KEY, bytes(32), SECP256K1_ORDER.to_bytes(32, "big")]
    with pytest.raises(secp256k1.InvalidPrivateKeyError, match=r"private_keys\[1\].*2 invalid"):
        signing.sign_digests(keys, np.zeros((3, 32), dtype=np.uint8), threads=2)


# --- parsing --------------------------------------------------------------------------------

def test_parse_signatures_accepts_every_spelling_and_normalises_v():
    body = "ab" * 64
    parsed = hexcodec.parse_signatures([f"0x{body}1b", f"{body}1c", f"0x{body.upper()}00", f"{body}01"])
    assert parsed.valid.all() and parsed.errors.null_count == 4
    assert parsed.sig65[:, 64].tolist() == [0, 1, 0, 1]
    assert (parsed.sig65[:, :64] == 0xAB).all()


@pytest.mark.parametrize("signature,reason", [
    (None, "got null"),
    ("0x" + "ab" * 64, "got 130 characters"),
    ("ab" * 66, "got 132 characters"),
    ("0x" + "ab" * 64 + "1g", "non-hex character at position 131"),
    ("0X" + "ab" * 64, "non-hex character at position 1"),
    ("ab" * 63 + "é" + "1b", "non-hex character at position 126"),
    ("0x" + "ab" * 64 + "1d", "v in {0, 1, 27, 28}, got 29"),
    ("0x" + "ab" * 64 + "02", "v in {0, 1, 27, 28}, got 2"),
    ("", "got 0 characters"),
])
def test_parse_signatures_says_what_was_expected_and_what_arrived(signature, reason):
    parsed = hexcodec.parse_signatures(pa.array(["0x" + "cd" * 64 + "1b", signature], pa.string()))
    assert parsed.valid.tolist() == [True, False]
    assert parsed.errors[0].as_py() is None
    assert parsed.errors[1].as_py().startswith("signature: expected")
    assert reason in parsed.errors[1].as_py()
    assert not parsed.sig65[1].any()


def test_parse_signatures_reads_sliced_chunked_and_large_string_columns():
    signatures = ["0x" + f"{i:02x}" * 64 + "1b" for i in range(6)]
    chunked = pa.chunked_array([pa.array(signatures[:2]), pa.array(signatures[2:])[1:]])
    large = pa.array(signatures, pa.large_string())[2:]
    assert hexcodec.parse_signatures(chunked).sig65[:, 0].tolist() == [0, 1, 3, 4, 5]
    assert hexcodec.parse_signatures(large).sig65[:, 0].tolist() == [2, 3, 4, 5]


def test_parse_accounts_requires_0x_and_40_hex_digits():
    good = "0x" + "aB" * 20
    addr20, valid = hexcodec.parse_accounts([good, "aB" * 21, "0x" + "ab" * 19, "0x" + "zz" * 20, None])
    assert valid.tolist() == [True, False, False, False, False]
    assert addr20[0].tobytes() == bytes.fromhex("ab" * 20) and not addr20[1:].any()


# --- recovery -------------------------------------------------------------------------------

def test_recoverer_recovers_only_the_listed_rows(vectors, recoverer):
    valid = [v for v in vectors if v["expect"] == "valid"]
    digests = eip191.eip191_digests(pa.array([v["message"] for v in valid]))
    sig65 = hexcodec.parse_signatures([v["signature"] for v in valid]).sig65
    addr20, ok = recoverer.recover(digests, sig65, rows=np.array([4, 0, 2, 2]))
    assert np.flatnonzero(ok).tolist() == [0, 2, 4]
    assert not addr20[~ok].any()
    accounts, _ = hexcodec.parse_accounts([v["payload"]["account"] for v in valid])
    assert (addr20[ok] == accounts[ok]).all()
    assert recoverer.recover(digests, sig65, rows=np.array([], dtype=np.int64))[1].sum() == 0


@pytest.mark.parametrize("r_s", [bytes(64), (SECP256K1_ORDER.to_bytes(32, "big") * 2)])
def test_well_formed_signature_that_does_not_recover_is_a_distinct_error(r_s, recoverer):
    signature = "0x" + r_s.hex() + "1b"
    assert hexcodec.parse_signatures([signature]).valid.all()
    with pytest.raises(secp256k1.UnrecoverableSignatureError) as raised:
        crypto.recover_address("hello", signature)
    assert not isinstance(raised.value, secp256k1.MalformedSignatureError)
    digests = eip191.eip191_digests(pa.array(["hello"]))
    _, ok = recoverer.recover(digests, hexcodec.parse_signatures([signature]).sig65)
    assert ok.tolist() == [False]


def test_recovery_id_beyond_3_fails_the_row_instead_of_aborting(recoverer):
    sig65 = hexcodec.parse_signatures([crypto.sign_proof(KEY, PAYLOAD)]).sig65.copy()
    sig65[0, 64] = 200
    _, ok = recoverer.recover(np.zeros((1, 32), dtype=np.uint8), sig65)
    assert ok.tolist() == [False]


@pytest.mark.parametrize("signature", ["0x1234", 12345, None])
def test_recover_address_raises_malformed_for_unparseable_signatures(signature):
    with pytest.raises(secp256k1.MalformedSignatureError):
        crypto.recover_address("hello", signature)


@pytest.mark.parametrize("field", ["lat", "lon", "accuracy", "nonce", "timestamp", "account",
                                   "triangleId"])
def test_changing_any_signed_field_changes_the_signer(field):
    signature = crypto.sign_proof(KEY, PAYLOAD)
    changed = {**PAYLOAD, field: PAYLOAD[field] + (1e-9 if isinstance(PAYLOAD[field], float) else "0")}
    signer = crypto.recover_address(crypto.canonical_message(changed), signature)
    assert signer != signing.address_of(KEY)


def test_canonical_messages_give_null_for_a_row_with_a_null_field():
    table = flat_table([PAYLOAD, PAYLOAD], [None, None])
    table = table.set_column(2, "lat", pa.array([None, 47.4979], pa.float64()))
    messages = eip191.canonical_messages(table).to_pylist()
    assert messages == [None, crypto.canonical_message(PAYLOAD)]
    assert "|lon:0|acc:1e-7|" in messages[1] and "account:0x2c7536e3605d9c16" in messages[1]


@pytest.mark.parametrize("key", [bytes(32), "0x" + "zz" * 32, SECP256K1_ORDER.to_bytes(32, "big"),
                                 b"short"])
def test_sign_proof_refuses_an_invalid_private_key(key):
    with pytest.raises(secp256k1.InvalidPrivateKeyError):
        crypto.sign_proof(key, PAYLOAD)


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string(), pa.string_view()])
def test_every_arrow_string_type_gives_the_same_digests_and_verdicts(string_type, recoverer):
    signature = crypto.sign_proof(KEY, PAYLOAD)
    table = flat_table([PAYLOAD, PAYLOAD], [signature, None])
    typed = pa.table({name: column.cast(string_type) if pa.types.is_string(column.type) else column
                      for name, column in zip(table.column_names, table.columns)})
    assert eip191.eip191_digests(eip191.canonical_messages(typed))[0].tobytes() == \
        eip191.eip191_digest(crypto.canonical_message(PAYLOAD))
    assert recovery.check_signers(typed, recoverer).matches.tolist() == [True, False]


def test_an_all_null_signature_column_is_invalid_row_by_row(recoverer):
    table = flat_table([PAYLOAD, PAYLOAD], [None, None]).set_column(7, "signature", pa.nulls(2))
    assert hexcodec.parse_signatures(table.column("signature")).errors.to_pylist() == [
        "signature: expected 65 bytes as 130 hex digits (0x optional), got null"] * 2
    assert recovery.check_signers(table, recoverer).matches.tolist() == [False, False]
