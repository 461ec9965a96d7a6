"""`stepbatch sign`: the proof it prints is one the validator accepts, and bad arguments are refused."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from stepbatch import MemoryStore, Validator, crypto, mesh
from stepbatch.cli import main
from stepbatch.crypto import signing
from stepbatch.ingest.timestamps import epoch_ms

KEY = "0x" + "11" * 32
WHERE = (47.4979, 19.0402)


def test_a_signed_proof_is_accepted_by_the_validator_and_recovers_to_its_account(capsys):
    assert main(["sign", "--key", KEY, "--at", f"{WHERE[0]},{WHERE[1]}", "--level", "14"]) == 0
    proof = json.loads(capsys.readouterr().out)
    payload = proof["payload"]
    assert payload["account"] == signing.address_of(KEY)
    assert payload["triangleId"] == mesh.triangle_at(*WHERE, 14)
    assert crypto.recover_address(crypto.canonical_message(payload), proof["signature"]) == payload["account"].lower()
    with Validator(MemoryStore([payload["triangleId"]])) as validator:
        result = validator.validate([proof], batch_time=_ms(payload["timestamp"]))
    assert result.verdicts.column("code").to_pylist() == ["ACCEPTED"]


@pytest.mark.parametrize("args, message", [
    (["--at", "47.5,19.0"], "private key"),
    (["--key", "0x12", "--at", "47.5,19.0"], "private key"),
    (["--key", KEY, "--at", "north"], "--at is LAT,LON"),
    (["--key", KEY, "--at", "91,0"], "latitude is -90..90"),
    (["--key", KEY, "--at", "47.5,19.0", "--level", "0"], "--level is 1-21"),
    (["--key", KEY, "--at", "47.5,19.0", "--triangle", "STEP-TRI-v1:nope"], "--triangle"),
])
def test_bad_arguments_are_refused_with_one_line(args, message, capsys, monkeypatch):
    monkeypatch.delenv("STEPBATCH_PRIVATE_KEY", raising=False)
    assert main(["sign", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _ms(stamp: str) -> int:
    return epoch_ms(dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")))
