"""The constants of the STEP protocol, each in one place: verdict codes, triangle states, rewards,
the mesh's depth, the proof version, the Earth radius of the speed check and the digest header.

A code's integer value is its position in the check order (SPEC §4), so "the first failing check
wins" is `min` over codes and every kernel can carry codes as `uint8`.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    ACCEPTED = 0
    INVALID_PAYLOAD = 1
    UNSUPPORTED_VERSION = 2
    LOW_GPS_ACCURACY = 3
    CLOCK_DRIFT = 4
    BAD_SIGNATURE = 5
    NONCE_REPLAY = 6
    TRIANGLE_NOT_FOUND = 7
    TRIANGLE_NOT_ACTIVE = 8
    OUT_OF_BOUNDS = 9
    TOO_FAST = 10
    MORATORIUM = 11


CODE_NAMES: tuple[str, ...] = tuple(code.name for code in Code)


class TriangleState(enum.IntEnum):
    """Stored triangle state; MISSING marks a triangle the store does not hold."""

    MISSING = -1
    ACTIVE = 0
    SUBDIVIDED = 1
    EXHAUSTED = 2


TRIANGLE_STATE_NAMES = {TriangleState.ACTIVE: "active", TriangleState.SUBDIVIDED: "subdivided",
                        TriangleState.EXHAUSTED: "exhausted"}

MAX_LEVEL = 21  # levels 1..21 (SPEC §3); level-21 triangles become exhausted instead of subdividing

PROOF_VERSION = "STEP-PROOF-v1"  # the only version accepted; the first field of the canonical message
EARTH_RADIUS_M = 6_371_000.0  # R of the haversine distance behind TOO_FAST (SPEC §4 check 10)
DIGEST_HEADER = "STEP-BATCH-VERDICTS-v1"  # first word of the text the verdict digest hashes (SPEC §4)

# round(1e6 / 2**(level-1)) as the original server formatted it, for levels 1..21.
REWARD_MICRO: tuple[int, ...] = (
    1000000, 500000, 250000, 125000, 62500, 31250, 15625, 7813, 3906, 1953, 977,
    488, 244, 122, 61, 31, 15, 8, 4, 2, 1,
)


def reward_micro(level: int) -> int:
    """Reward in micro-STEP for an accepted proof on a triangle of `level` (1..21)."""
    return REWARD_MICRO[level - 1]
