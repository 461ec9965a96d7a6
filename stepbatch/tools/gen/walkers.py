"""Journeys for `stepbatch gen`: when phones prove, where their owners walk, what GPS reports, and
when and where an attack row happens relative to its walker's honest proofs.

Positions are metres east (`x_m`) and north (`y_m`) of the centre in a local tangent plane. Walks span
a few kilometres, where that plane and the validator's haversine disagree by well under 1 %, far
inside the margins kept below against the speed limit (15 m/s), the moratorium (10 s), the clock
drift limit (120 s) and the accuracy limit (50 m) of SPEC §4.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from stepbatch.protocol import EARTH_RADIUS_M

# Proof cadence of an honest phone: above the moratorium with room for the network latency, so a
# walker's proofs arrive in the order they were made.
MIN_INTERVAL_MS, MAX_INTERVAL_MS = 10_500, 60_000
MIN_LATENCY_MS, MAX_LATENCY_MS = 30, 1_500

MIN_SPEED_MPS, MAX_SPEED_MPS = 1.0, 2.0
MIN_ACCURACY_M, MAX_ACCURACY_M = 3.0, 30.0
# A reported fix lies at most this many reported accuracies from the truth. Two honest fixes are
# then at most 2·10.5 + 2·45 m apart after 10.5 s, about 10.6 m/s, under the 15 m/s limit.
NOISE_CLIP_ACCURACIES = 1.5

PAUSE_START_P, PAUSE_STAY_P = 0.07, 0.6  # a walker stops (a crossing, a shop window) and resumes
CORNER_P = 0.08  # chance per step of turning a street corner (±90°)
HEADING_DRIFT_RAD = 0.35
SPEED_JITTER_MPS = 0.15
LOCAL_TIME_SHARE = 0.2  # phones that send local time with an offset instead of `Z`

# When an attack row happens, after the honest proof that opens its gap. An attack arrives after
# that proof (whose latency is at most 1.5 s) and before the next one.
IN_GAP, SOON_AFTER, LATE_AFTER = 0, 1, 2
ATTACK_AFTER_MS = 2_500
ATTACK_BEFORE_NEXT_MS = 2_200
SOON_MAX_MS = 8_500  # inside the 10 s moratorium, with a margin
LATE_MIN_MS = 11_000  # past the moratorium, with a margin
LATE_GAP_MS = 14_000  # a gap holding a late attack is stretched to at least this

# Where an attack row is reported.
FIX, NEAR_LAST, FAR_JUMP, POOR_FIX = 0, 1, 2, 3
NEAR_LAST_ERROR_M = 2.0  # GPS error of a fix taken seconds after the last one: nearly the same
JUMP_SPEED_MPS = (30.0, 45.0)  # a teleport covers 2-3× the speed limit, plus a detour
JUMP_EXTRA_M = (300.0, 800.0)
POOR_ACCURACY_M = (55.0, 300.0)  # above the 50 m limit
UNSET_ACCURACY_SHARE = 0.15  # poor fixes reported as 0 or -1 (no accuracy), also refused
SKEW_MS = (125_000, 7_200_000)  # clock off by over the 120 s limit plus the latency, up to 2 h


@dataclasses.dataclass(frozen=True)
class AttackStyle:
    """How an attack kind behaves relative to its walker's last honest proof."""

    timing: int = IN_GAP
    position: int = FIX
    skewed_clock: bool = False


@dataclasses.dataclass(frozen=True)
class Walks:
    """N walkers × K proof slots (axis 0 walkers, axis 1 slots, in time order)."""

    t_ms: np.ndarray  # int64 proof time in ms after the start
    x_m: np.ndarray  # float64 true position, metres east of the centre
    y_m: np.ndarray  # float64 metres north


@dataclasses.dataclass(frozen=True)
class Journeys:
    """Every row of every walker, honest (kind 0) and attack, in arrival order."""

    walker: np.ndarray  # int64
    kind: np.ndarray  # int8: 0 honest, else the attack kind code the caller gave
    ts_ms: np.ndarray  # int64 ms after the start: the time the proof claims
    recv_ms: np.ndarray  # int64 ms after the start: when the server received it
    x_m: np.ndarray  # float64 reported position
    y_m: np.ndarray
    accuracy_m: np.ndarray  # float64 reported accuracy
    local_time: np.ndarray  # bool per walker: the phone sends local time with an offset
    horizon_ms: int  # every walker has honest slots up to this time


def slots_needed(n_walkers: int, proofs: int | None, duration_s: float | None,
                 attacks_per_gap: float) -> int:
    """Proof slots per walker that cover `proofs` rows or `duration_s` with room to spare."""
    mean_interval_ms = (MIN_INTERVAL_MS + MAX_INTERVAL_MS) / 2
    if duration_s is not None:
        slots = duration_s * 1000 / mean_interval_ms
    else:
        slots = proofs / (n_walkers * (1.0 + attacks_per_gap))
    return int(slots * 1.1 + 4 * math.sqrt(slots) + 4)


def journeys(rng: np.random.Generator, n_walkers: int, n_slots: int, attacks_per_gap: float,
             attack_kinds: np.ndarray, attack_p: np.ndarray, styles: list[AttackStyle],
             radius_m: float) -> Journeys:
    """Honest proofs at every slot, plus `attacks_per_gap` attacks on average in each gap between
    two slots of a walker, of the kinds `attack_kinds` (codes ≥ 1, with probabilities `attack_p`
    and one style each)."""
    intervals = proof_intervals_ms(rng, n_walkers, n_slots)
    whole, fraction = divmod(attacks_per_gap, 1.0)
    per_gap = int(whole) + (rng.random((n_walkers, n_slots)) < fraction)
    per_gap[:, -1] = 0  # the last slot opens no gap
    gap = np.repeat(np.arange(n_walkers * n_slots), per_gap.ravel())  # flat slot before each attack
    choice = rng.choice(len(attack_kinds), size=len(gap), p=attack_p) if len(gap) else gap
    timing = np.array([s.timing for s in styles], np.int8)[choice]
    position = np.array([s.position for s in styles], np.int8)[choice]
    skewed = np.array([s.skewed_clock for s in styles], np.bool_)[choice]
    stretch = np.zeros(n_walkers * n_slots, np.bool_)
    stretch[gap[timing == LATE_AFTER] + 1] = True
    intervals = np.where(stretch.reshape(intervals.shape), np.maximum(intervals, LATE_GAP_MS), intervals)
    walks = simulate_walks(rng, intervals, radius_m)
    t, x, y = walks.t_ms.ravel(), walks.x_m.ravel(), walks.y_m.ravel()

    accuracy = gps_accuracy_m(rng, t.shape)
    error_x, error_y = gps_error_m(rng, accuracy)
    fix_x, fix_y = x + error_x, y + error_y

    gap_ms = t[gap + 1] - t[gap]
    low = np.where(timing == LATE_AFTER, LATE_MIN_MS, ATTACK_AFTER_MS)
    high = np.where(timing == SOON_AFTER, SOON_MAX_MS, gap_ms - ATTACK_BEFORE_NEXT_MS)
    delay_ms = low + (rng.random(len(gap)) * (high - low + 1)).astype(np.int64)
    along = delay_ms / gap_ms
    true_x = x[gap] + along * (x[gap + 1] - x[gap])
    true_y = y[gap] + along * (y[gap + 1] - y[gap])

    attack_accuracy = gps_accuracy_m(rng, len(gap))
    poor = position == POOR_FIX
    attack_accuracy[poor] = np.where(rng.random(int(poor.sum())) < UNSET_ACCURACY_SHARE,
                                     rng.choice([0.0, -1.0], int(poor.sum())),
                                     np.round(rng.uniform(*POOR_ACCURACY_M, int(poor.sum())), 1))
    error_x, error_y = gps_error_m(rng, np.maximum(attack_accuracy, 0.0))
    attack_x, attack_y = true_x + error_x, true_y + error_y
    # A fix seconds after an accepted one: the accepted fix moved by the walk since, barely noisier.
    near = position == NEAR_LAST
    error_x, error_y = gps_error_m(rng, np.full(int(near.sum()), NEAR_LAST_ERROR_M))
    attack_x[near] = fix_x[gap[near]] + true_x[near] - x[gap[near]] + error_x
    attack_y[near] = fix_y[gap[near]] + true_y[near] - y[gap[near]] + error_y
    attack_accuracy[near] = accuracy[gap[near]]
    jump = position == FAR_JUMP
    jump_m = (rng.uniform(*JUMP_SPEED_MPS, int(jump.sum())) * delay_ms[jump] / 1000.0
              + rng.uniform(*JUMP_EXTRA_M, int(jump.sum())))
    bearing = rng.uniform(0.0, 2 * np.pi, int(jump.sum()))
    attack_x[jump] = fix_x[gap[jump]] + jump_m * np.cos(bearing)
    attack_y[jump] = fix_y[gap[jump]] + jump_m * np.sin(bearing)

    walker = np.concatenate([np.repeat(np.arange(n_walkers), n_slots), gap // n_slots])
    ts_ms = np.concatenate([t, t[gap] + delay_ms])
    recv_ms = ts_ms + rng.integers(MIN_LATENCY_MS, MAX_LATENCY_MS, len(ts_ms), endpoint=True)
    skew_ms = rng.integers(*SKEW_MS, int(skewed.sum())) * rng.choice([-1, 1], int(skewed.sum()))
    ts_ms[len(t) + np.flatnonzero(skewed)] = recv_ms[len(t) + np.flatnonzero(skewed)] + skew_ms
    order = np.lexsort((np.arange(len(ts_ms)), walker, recv_ms))  # ties: walker, then honest first
    return Journeys(
        walker=walker[order],
        kind=np.concatenate([np.zeros(len(t), np.int8), np.asarray(attack_kinds, np.int8)[choice]])[order],
        ts_ms=ts_ms[order], recv_ms=recv_ms[order],
        x_m=np.concatenate([fix_x, attack_x])[order], y_m=np.concatenate([fix_y, attack_y])[order],
        accuracy_m=np.concatenate([accuracy, attack_accuracy])[order],
        local_time=rng.random(n_walkers) < LOCAL_TIME_SHARE,
        horizon_ms=int(walks.t_ms[:, -1].min()))


def proof_intervals_ms(rng: np.random.Generator, n_walkers: int, n_slots: int) -> np.ndarray:
    """(N, K) int64: column 0 is each walker's first proof after the start (0–60 s, so walkers do not
    start in lockstep), column j > 0 the gap between slot j−1 and slot j."""
    intervals = rng.integers(MIN_INTERVAL_MS, MAX_INTERVAL_MS, size=(n_walkers, n_slots),
                             endpoint=True, dtype=np.int64)
    intervals[:, 0] = rng.integers(0, MAX_INTERVAL_MS, size=n_walkers, dtype=np.int64)
    return intervals


def simulate_walks(rng: np.random.Generator, intervals_ms: np.ndarray, radius_m: float) -> Walks:
    """True positions at every proof slot: 1–2 m/s, drifting heading, street corners, pauses, turned
    back toward the centre at `radius_m`. Vectorized over walkers, one step per slot."""
    n_walkers, n_slots = intervals_ms.shape
    t_ms = np.cumsum(intervals_ms, axis=1)
    step_s = np.diff(t_ms, axis=1).T / 1000.0  # (K−1, N): row j is the walk from slot j to j+1

    # Every random number is drawn up front, so the walk depends on the seed alone.
    start_radius = radius_m * np.sqrt(rng.random(n_walkers))
    start_bearing = rng.uniform(0.0, 2 * np.pi, n_walkers)
    heading = rng.uniform(0.0, 2 * np.pi, n_walkers)
    pace_mps = rng.uniform(1.2, 1.8, n_walkers)
    shape = (n_slots - 1, n_walkers)
    speed_jitter = rng.normal(0.0, SPEED_JITTER_MPS, shape)
    turn = rng.normal(0.0, HEADING_DRIFT_RAD, shape)
    corner = np.where(rng.random(shape) < CORNER_P, rng.choice([-np.pi / 2, np.pi / 2], shape), 0.0)
    pause_draw = rng.random(shape)
    homeward_jitter = rng.normal(0.0, 0.6, shape)

    x = np.empty((n_walkers, n_slots))
    y = np.empty((n_walkers, n_slots))
    x[:, 0] = start_radius * np.cos(start_bearing)
    y[:, 0] = start_radius * np.sin(start_bearing)
    paused = np.zeros(n_walkers, dtype=bool)
    radius_sq = radius_m * radius_m
    for j in range(n_slots - 1):
        paused = np.where(paused, pause_draw[j] < PAUSE_STAY_P, pause_draw[j] < PAUSE_START_P)
        heading = heading + turn[j] + corner[j]
        speed = np.clip(pace_mps + speed_jitter[j], MIN_SPEED_MPS, MAX_SPEED_MPS)
        distance = np.where(paused, 0.0, speed * step_s[j])
        x0, y0 = x[:, j], y[:, j]
        nx, ny = x0 + distance * np.cos(heading), y0 + distance * np.sin(heading)
        outside = nx * nx + ny * ny > radius_sq
        if outside.any():
            heading = np.where(outside, np.arctan2(-y0, -x0) + homeward_jitter[j], heading)
            nx = np.where(outside, x0 + distance * np.cos(heading), nx)
            ny = np.where(outside, y0 + distance * np.sin(heading), ny)
            # A step longer than the disc is wide still overshoots; projecting onto the disc (convex)
            # only shortens the step, so the walking speed bound holds.
            scale = np.minimum(1.0, radius_m / np.maximum(np.hypot(nx, ny), 1e-9))
            nx, ny = nx * scale, ny * scale
        x[:, j + 1], y[:, j + 1] = nx, ny
    return Walks(t_ms=t_ms, x_m=x, y_m=y)


def gps_accuracy_m(rng: np.random.Generator, size) -> np.ndarray:
    """Reported accuracies: mostly 5–15 m as phones in a city report, clipped to 3–30 m, 0.1 m steps."""
    raw = np.exp(rng.normal(np.log(8.0), 0.5, size))
    return np.round(np.clip(raw, MIN_ACCURACY_M, MAX_ACCURACY_M), 1)


def gps_error_m(rng: np.random.Generator, accuracy_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dx_m, dy_m) fix errors consistent with each reported accuracy: circular Gaussian with
    σ = accuracy/2 per axis (86 % of fixes within the accuracy), clipped at 1.5 accuracies."""
    accuracy_m = np.asarray(accuracy_m, dtype=np.float64)
    radius = accuracy_m / 2 * np.sqrt(-2.0 * np.log1p(-rng.random(accuracy_m.shape)))
    radius = np.minimum(radius, NOISE_CLIP_ACCURACIES * accuracy_m)
    bearing = rng.uniform(0.0, 2 * np.pi, accuracy_m.shape)
    return radius * np.cos(bearing), radius * np.sin(bearing)


def to_lat_lon(center: tuple[float, float], x_m: np.ndarray, y_m: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Degrees of local-plane points, rounded to 7 decimals (about 1 cm) as location APIs report them;
    longitudes wrap into [-180, 180)."""
    lat0, lon0 = center
    lat = lat0 + np.degrees(np.asarray(y_m) / EARTH_RADIUS_M)
    lon = lon0 + np.degrees(np.asarray(x_m) / (EARTH_RADIUS_M * np.cos(np.radians(lat0))))
    lon = (lon + 180.0) % 360.0 - 180.0
    return np.round(lat, 7), np.round(lon, 7)


def destination(center: tuple[float, float], bearing_rad: np.ndarray, distance_m: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) degrees reached from `center` along great circles of the given bearings."""
    lat0, lon0 = np.radians(center[0]), np.radians(center[1])
    angle = distance_m / EARTH_RADIUS_M
    lat = np.arcsin(np.clip(np.sin(lat0) * np.cos(angle)
                            + np.cos(lat0) * np.sin(angle) * np.cos(bearing_rad), -1.0, 1.0))
    lon = lon0 + np.arctan2(np.sin(bearing_rad) * np.sin(angle) * np.cos(lat0),
                            np.cos(angle) - np.sin(lat0) * np.sin(lat))
    return np.degrees(lat), (np.degrees(lon) + 180.0) % 360.0 - 180.0
