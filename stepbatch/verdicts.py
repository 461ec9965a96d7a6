"""The verdict table, its messages and the digests of SPEC §4.

The digest is what validators compare in a consensus round, so its text is built exactly as SPEC §4
writes it and hashed in one pass over one Arrow buffer. Messages are for people and are not part of
the digest.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from stepbatch.checks import StatelessResult
from stepbatch.config import Config
from stepbatch.protocol import CODE_NAMES, DIGEST_HEADER, MAX_LEVEL, PROOF_VERSION, Code, TriangleState
from stepbatch.resolve import Resolution
from stepbatch.schema import VERDICT_SCHEMA

_V2_REFUSAL = (
    "STEP-PROOF-v2 is refused: its canonical form (JSON.stringify(payload, sortedTopLevelKeys)) drops "
    "every nested field, so the signature does not cover the location")

_CODE_STRINGS = pa.array(CODE_NAMES, pa.string())


def code_names(codes: np.ndarray) -> pa.Array:
    """uint8 codes → their names as a string array."""
    return _CODE_STRINGS.take(pa.array(codes, pa.uint8()))


def build_verdicts(proofs: pa.Table, stateless: StatelessResult, resolution: Resolution,
                   config: Config) -> pa.Table:
    """One verdict row per proof (VERDICT_SCHEMA), with a message for people beside each code."""
    code = resolution.code
    n = len(code)
    accepted = code == Code.ACCEPTED
    frame = pl.DataFrame({
        "code": code,
        "drift_ms": stateless.drift_ms,
        "dt_ms": resolution.dt_ms,
        "triangle_state": resolution.triangle_state,
        "level": resolution.level,
        "reward": resolution.reward_micro,
        "click": resolution.click_number,
        "speed": resolution.speed_mps,
        "subdivided": resolution.subdivided,
        "payload_error": pl.from_arrow(proofs.column("payload_error")),
        "version": pl.from_arrow(proofs.column("version")),
        "accuracy": pl.from_arrow(proofs.column("accuracy")),
        "triangle_id": pl.from_arrow(proofs.column("triangle_id")),
        "recovered": pl.from_arrow(stateless.recovered),
    })
    message = frame.select(_message_expr(config).alias("message")).to_series().to_arrow()
    speed_mps = resolution.speed_mps
    return pa.Table.from_arrays([
        pa.array(np.arange(n, dtype=np.int64)),
        proofs.column("account").combine_chunks(),
        proofs.column("nonce").combine_chunks(),
        proofs.column("triangle_id").combine_chunks(),
        code_names(code),
        message.cast(pa.string()),
        pa.array(resolution.reward_micro, pa.int64()),
        pa.array(resolution.click_number, pa.int64(), mask=~accepted),
        pa.array(speed_mps, pa.float64(), mask=np.isnan(speed_mps)),
    ], schema=VERDICT_SCHEMA)


@functools.lru_cache(maxsize=16)
def _message_expr(config: Config) -> pl.Expr:
    """The message of every code, as one expression: built once per configuration (building it costs
    as much as evaluating it on a small batch)."""
    code, dt_ms, level = pl.col("code"), pl.col("dt_ms"), pl.col("level")
    state_name = (pl.when(pl.col("triangle_state") == TriangleState.SUBDIVIDED)
                  .then(pl.lit("subdivided")).otherwise(pl.lit("exhausted")))
    accepted = pl.format("accepted: click {} on level {} triangle, reward {} micro-STEP",
                         pl.col("click"), level, pl.col("reward"))
    return (
        pl.when(code == Code.ACCEPTED).then(
            pl.when(pl.col("subdivided"))
            .then(pl.concat_str([accepted, pl.lit("; the triangle is now "),
                                 pl.when(level >= MAX_LEVEL).then(pl.lit("exhausted"))
                                 .otherwise(pl.lit("subdivided"))]))
            .otherwise(accepted))
        .when(code == Code.INVALID_PAYLOAD).then(pl.col("payload_error"))
        .when(code == Code.UNSUPPORTED_VERSION).then(
            pl.when(pl.col("version") == "STEP-PROOF-v2").then(pl.lit(_V2_REFUSAL))
            .otherwise(pl.format("unsupported version '{}': only {} is accepted", _quoted(pl.col("version")),
                                 pl.lit(PROOF_VERSION))))
        .when(code == Code.LOW_GPS_ACCURACY).then(
            pl.format("GPS accuracy {} m is outside (0, {}] m", pl.col("accuracy"),
                      pl.lit(_number(config.gps_max_accuracy_m))))
        .when(code == Code.CLOCK_DRIFT).then(
            pl.format("timestamp is {} ms from the reference time; at most {} ms allowed",
                      pl.col("drift_ms").abs(), pl.lit(config.clock_drift_ms)))
        .when(code == Code.BAD_SIGNATURE).then(
            pl.when(pl.col("recovered").is_null())
            .then(pl.lit("signature does not recover to any public key"))
            .otherwise(pl.format("signature recovers to {}, not to the account", pl.col("recovered"))))
        .when(code == Code.NONCE_REPLAY).then(
            pl.lit("nonce already used by an accepted proof of this account"))
        .when(code == Code.TRIANGLE_NOT_FOUND).then(
            pl.format("triangle {} does not exist", pl.col("triangle_id")))
        .when(code == Code.TRIANGLE_NOT_ACTIVE).then(
            pl.format("triangle {} is {}, not active", pl.col("triangle_id"), state_name))
        .when(code == Code.OUT_OF_BOUNDS).then(
            pl.format("point is outside triangle {}", pl.col("triangle_id")))
        .when(code == Code.TOO_FAST).then(
            pl.when(pl.col("speed").is_nan())
            .then(pl.format("timestamp is not after the account's last accepted proof (Δt = {} ms)",
                            dt_ms))
            .otherwise(pl.format("{} m/s since the last accepted proof exceeds {} m/s",
                                 pl.col("speed").round(3), pl.lit(_number(config.speed_limit_mps)))))
        .when(code == Code.MORATORIUM).then(
            pl.format("{} ms since the last accepted proof; at least {} ms required", dt_ms,
                      pl.lit(config.moratorium_ms)))
        .otherwise(pl.lit("unknown code"))
    )


def _quoted(text: pl.Expr, limit: int = 64) -> pl.Expr:
    """Input echoed in a message, cut to `limit` characters."""
    return pl.when(text.str.len_chars() > limit).then(text.str.slice(0, limit) + "…").otherwise(text)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def counts_by_code(code: np.ndarray) -> dict[str, int]:
    """{code name: rows} for the codes that occur, in check order."""
    counts = np.bincount(code, minlength=len(CODE_NAMES))
    return {CODE_NAMES[i]: int(c) for i, c in enumerate(counts) if c}


def balances_after(verdicts: pa.Table, outcome) -> np.ndarray:
    """Per row, the account's balance in micro-STEP right after that row (-1 for a rejected row):
    its balance before the batch plus the rewards of its accepted rows up to that one."""
    n = verdicts.num_rows
    out = np.full(n, -1, np.int64)
    if outcome is None or n == 0:
        return out
    codes = verdicts.column("code").to_numpy(zero_copy_only=False)
    accepted = np.flatnonzero(codes == Code.ACCEPTED.name)
    if not len(accepted):
        return out
    account = outcome.row_account[accepted]
    reward = verdicts.column("reward_micro").to_numpy()[accepted]
    order = np.argsort(account, kind="stable")
    running = np.cumsum(reward[order])
    starts = np.flatnonzero(np.r_[True, account[order][1:] != account[order][:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    before = np.r_[0, running][group_start]
    cumulative = np.empty(len(order), np.int64)
    cumulative[order] = running - before
    out[accepted] = outcome.prior.account_balance_micro[account] + cumulative
    return out


def verdict_digest(batch_id: str, verdicts: pa.Table) -> str:
    """SHA-256 of `STEP-BATCH-VERDICTS-v1:{batch_id}:{n}\\n` and one `{index}:{code}:{reward}:{click}\\n` a row."""
    n = verdicts.num_rows
    sha = hashlib.sha256(f"{DIGEST_HEADER}:{batch_id}:{n}\n".encode())
    if n:
        click = pc.fill_null(pc.cast(verdicts.column("click_number"), pa.string()), "")
        lines = pc.binary_join_element_wise(
            pc.cast(verdicts.column("index"), pa.string()),
            verdicts.column("code"),
            pc.cast(verdicts.column("reward_micro"), pa.string()),
            pc.binary_join_element_wise(click, "\n", ""),
            ":",
        ).combine_chunks()
        sha.update(_string_bytes(lines))
    return sha.hexdigest()


def input_digest(proofs: pa.Table, batch_time_ms: int | None, config: Config) -> str:
    """A fingerprint of what a batch's verdicts depend on besides the prior state: the signed fields,
    signature and received_at of each row, its field-rule verdict (the reason without the line or row
    it was framed at, so the same proofs as NDJSON, JSON or a list match), the batch time and the
    gates. Two submissions under one batch id are the same batch iff it matches."""
    gates = ",".join(f"{name}={getattr(config, name)!r}" for name in GATES)
    sha = hashlib.sha256(f"STEP-BATCH-INPUT-v2:{proofs.num_rows}:{batch_time_ms}:{gates}\n".encode())
    reasons = pc.replace_substring_regex(proofs.column("payload_error"), _WHERE, "")
    for name, column in [*((n, proofs.column(n)) for n in (
            "version", "account", "triangle_id", "timestamp", "nonce", "signature")),
            ("payload_error", reasons)]:
        column = column.combine_chunks()
        sha.update(name.encode())
        sha.update(np.asarray(pc.fill_null(pc.binary_length(column), -1), np.int64).tobytes())
        sha.update(_string_bytes(pc.fill_null(column, "")))
    for name in ("lat", "lon", "accuracy"):
        values = proofs.column(name).combine_chunks()
        sha.update(name.encode())
        sha.update(np.asarray(values.is_null()).tobytes())
        sha.update(np.asarray(pc.fill_null(values, 0.0), np.float64).tobytes())
    received = pc.cast(proofs.column("received_at"), pa.int64()).combine_chunks()
    sha.update(np.asarray(received.is_null()).tobytes())
    sha.update(np.asarray(pc.fill_null(received, 0), np.int64).tobytes())
    return sha.hexdigest()


# The gates that decide verdicts; storage settings and thread counts do not.
GATES = ("gps_max_accuracy_m", "clock_drift_ms", "speed_limit_mps", "moratorium_ms", "subdivide_at_clicks")
# Where ingest found a row ("b.ndjson line 3: ", "row 5: "), in front of its field-rule reason.
_WHERE = r"^(?:[^:]* )?(?:line|row) \d+: "


def _string_bytes(array: pa.Array) -> memoryview:
    """The concatenated UTF-8 of a string array without nulls, straight from its data buffer."""
    array = array.cast(pa.large_string()) if pa.types.is_string(array.type) else array
    offsets = np.frombuffer(array.buffers()[1], np.int64, len(array) + 1, array.offset * 8)
    data = array.buffers()[2]
    if data is None:
        return memoryview(b"")
    return memoryview(data)[offsets[0]:offsets[-1]]
