"""Stage 2: the checks that need no state (SPEC §4 checks 1–5 and 9), over whole columns.

Signature recovery is the costly part, so it runs last and only on rows every cheaper check passed;
the point-in-triangle test (check 9) is computed here too because it needs no state, and the
resolver applies it in its place in the check order.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.config import Config
from stepbatch.crypto import hexcodec, recovery
from stepbatch.mesh import keys as mesh_keys
from stepbatch.protocol import PROOF_VERSION, Code


@dataclasses.dataclass
class StatelessResult:
    code: np.ndarray  # uint8: first failing check among 1–5, 0 when all passed
    out_of_bounds: np.ndarray  # bool: check 9 failed (meaningful where code == 0)
    drift_ms: np.ndarray  # int64: timestamp − reference time, 0 where no reference exists
    recovered: pa.Array  # string: address a BAD_SIGNATURE row recovered to, else null
    timings: dict[str, float]


def stateless_checks(proofs: pa.Table, config: Config, batch_time_ms: int | None,
                     recoverer: recovery.SignatureRecoverer) -> StatelessResult:
    started = time.perf_counter()
    n = proofs.num_rows
    code = np.zeros(n, np.uint8)

    _fail(code, _is_true(pc.is_valid(proofs.column("payload_error"))), Code.INVALID_PAYLOAD)
    _fail(code, ~_is_true(pc.equal(proofs.column("version"), PROOF_VERSION)), Code.UNSUPPORTED_VERSION)

    accuracy = _floats(proofs.column("accuracy"))
    _fail(code, ~((accuracy > 0) & (accuracy <= config.gps_max_accuracy_m)), Code.LOW_GPS_ACCURACY)

    ts_ms = _ints(proofs.column("ts_ms"))
    reference_ms = pc.cast(proofs.column("received_at"), pa.int64())
    if batch_time_ms is not None:
        reference_ms = pc.fill_null(reference_ms, batch_time_ms)
    has_reference = _is_true(pc.is_valid(reference_ms))
    drift_ms = np.where(has_reference, ts_ms - _ints(reference_ms), 0)
    _fail(code, np.abs(drift_ms) > config.clock_drift_ms, Code.CLOCK_DRIFT)

    gates_done = time.perf_counter()
    candidates = np.flatnonzero(code == 0)
    out_of_bounds = np.zeros(n, np.bool_)
    if len(candidates):
        rows = pa.array(candidates)
        keys = _ints(pc.take(proofs.column("triangle_key"), rows))
        lat = _floats(pc.take(proofs.column("lat"), rows))
        lon = _floats(pc.take(proofs.column("lon"), rows))
        out_of_bounds[candidates] = ~mesh_keys.contains_keys(keys, lat, lon)
    geometry_done = time.perf_counter()

    recovered = pa.nulls(n, pa.string())
    if len(candidates):
        bad, recovered = _check_signatures(proofs, candidates, recoverer)
        code[candidates[bad]] = Code.BAD_SIGNATURE
    signatures_done = time.perf_counter()

    return StatelessResult(code=code, out_of_bounds=out_of_bounds, drift_ms=drift_ms,
                           recovered=recovered, timings={
                               "gates": gates_done - started,
                               "geometry": geometry_done - gates_done,
                               "signatures": signatures_done - geometry_done,
                           })


def _check_signatures(proofs: pa.Table, candidates: np.ndarray,
                      recoverer: recovery.SignatureRecoverer) -> tuple[np.ndarray, pa.Array]:
    """bad[i] when candidate row i is not signed by its account, and, aligned with all rows, the
    address each bad row recovered to (null where none recovered)."""
    check = recovery.check_signers(proofs.take(pa.array(candidates)), recoverer)
    bad = ~check.matches
    recovered = np.zeros((proofs.num_rows, 20), np.uint8)
    recovered_ok = np.zeros(proofs.num_rows, np.bool_)
    recovered[candidates] = check.signers
    recovered_ok[candidates] = bad & check.recovered
    return bad, hexcodec.addresses_to_hex(recovered, recovered_ok)


def _fail(code: np.ndarray, failed: np.ndarray, value: Code) -> None:
    """Give `value` to rows that fail this check and passed every earlier one."""
    code[(code == 0) & failed] = value


def _is_true(mask) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False), dtype=np.bool_)


def _floats(column) -> np.ndarray:
    return np.asarray(pc.fill_null(column, np.nan), dtype=np.float64)


def _ints(column) -> np.ndarray:
    return np.asarray(pc.fill_null(column, 0), dtype=np.int64)
