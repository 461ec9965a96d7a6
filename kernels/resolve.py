"""The stateful resolver: SPEC §4 checks 6–11 and the state rules, applied row by row in batch order.

Everything arrives as dense integer codes (accounts, triangles and (account, nonce) pairs factorized
by the caller) and state arrays aligned with them, so one sequential pass with no hashing or lookups
gives exactly the verdicts of validating the rows one at a time. The pass is inherently sequential
(row i may depend on any earlier row), which is why it is a plain `@kernel` and not parallel.
"""

from __future__ import annotations

import numpy as np

from stepbatch.protocol import Code, TriangleState
from stepbatch_kernels.jit import kernel
from stepbatch_kernels.rules import since_last, state_after_click, timing_code

# Numba freezes IntEnum members into the compiled code as integer constants.
ACCEPTED, NONCE_REPLAY = Code.ACCEPTED, Code.NONCE_REPLAY
TRIANGLE_NOT_FOUND, TRIANGLE_NOT_ACTIVE, OUT_OF_BOUNDS = Code.TRIANGLE_NOT_FOUND, Code.TRIANGLE_NOT_ACTIVE, \
    Code.OUT_OF_BOUNDS
MISSING, ACTIVE, SUBDIVIDED = TriangleState.MISSING, TriangleState.ACTIVE, TriangleState.SUBDIVIDED


@kernel
def resolve_rows(pre_code, out_of_bounds, row_account, row_pair, row_triangle, lat_deg, lon_deg, ts_ms,
                 triangle_level, triangle_children, reward_micro_by_level,
                 account_balance_micro, account_proof_count, account_has_last, account_last_lat,
                 account_last_lon, account_last_ts_ms, triangle_state, triangle_clicks, nonce_used,
                 speed_limit_mps, moratorium_ms, subdivide_at_clicks,
                 out_code, out_reward_micro, out_click_number, out_speed_mps, out_dt_ms,
                 out_triangle_state, out_subdivided):
    """Resolve every row in order, mutating the state arrays into the state after the batch.

    pre_code: uint8 code of the first failing stateless check (0 when checks 1–5 all passed).
    out_of_bounds: bool, check 9 (point not in the claimed triangle), computed statelessly.
    row_*: int index into the account / pair / triangle arrays (only read where pre_code == 0).
    triangle_children: (n_triangles, 4) index of each child in the triangle arrays, -1 when the child
    is not one the batch names (its creation is then the store's business, not the batch's).
    out_click_number is 0 for a rejected row, out_speed_mps NaN where no speed was measured,
    out_dt_ms the time since the account's last accepted proof (0 where there was none), and
    out_triangle_state the state the row found its triangle in (MISSING where it never got that far).
    Only `stepbatch.resolve.run_resolver` calls this; it names every argument.
    """
    n = pre_code.shape[0]
    for i in range(n):
        out_reward_micro[i] = 0
        out_click_number[i] = 0
        out_speed_mps[i] = np.nan
        out_dt_ms[i] = 0
        out_triangle_state[i] = MISSING
        out_subdivided[i] = False
        code = pre_code[i]
        if code != ACCEPTED:
            out_code[i] = code
            continue
        acc = row_account[i]
        pair = row_pair[i]
        tri = row_triangle[i]
        if nonce_used[pair]:
            out_code[i] = NONCE_REPLAY
            continue
        state = triangle_state[tri]
        out_triangle_state[i] = state
        if state == MISSING:
            out_code[i] = TRIANGLE_NOT_FOUND
            continue
        if state != ACTIVE:
            out_code[i] = TRIANGLE_NOT_ACTIVE
            continue
        if out_of_bounds[i]:
            out_code[i] = OUT_OF_BOUNDS
            continue
        if account_has_last[acc]:
            dt_ms, speed_mps = since_last(account_last_lat[acc], account_last_lon[acc], account_last_ts_ms[acc],
                                          lat_deg[i], lon_deg[i], ts_ms[i])
            out_dt_ms[i] = dt_ms
            out_speed_mps[i] = speed_mps
            code = timing_code(True, dt_ms, speed_mps, speed_limit_mps, moratorium_ms)
            if code != ACCEPTED:
                out_code[i] = code
                continue

        level = triangle_level[tri]
        reward = reward_micro_by_level[level - 1]
        clicks = triangle_clicks[tri] + 1
        triangle_clicks[tri] = clicks
        out_code[i] = ACCEPTED
        out_reward_micro[i] = reward
        out_click_number[i] = clicks
        nonce_used[pair] = True
        account_balance_micro[acc] += reward
        account_proof_count[acc] += 1
        account_has_last[acc] = True
        account_last_lat[acc] = lat_deg[i]
        account_last_lon[acc] = lon_deg[i]
        account_last_ts_ms[acc] = ts_ms[i]
        after = state_after_click(clicks, level, subdivide_at_clicks)
        if after != ACTIVE:
            out_subdivided[i] = True
            triangle_state[tri] = after
            if after == SUBDIVIDED:
                for c in range(4):
                    child = triangle_children[tri, c]
                    if child >= 0 and triangle_state[child] == MISSING:
                        triangle_state[child] = ACTIVE
                        triangle_clicks[child] = 0

