"""The one place Numba compiler flags are chosen.

`fastmath` stays off everywhere: verdicts must be bit-identical on every validator, and reassociated
floating point would let two machines disagree on a point that sits on a triangle edge or a speed
exactly at the limit. `cache=True` writes compiled kernels beside their source so a second process
does not recompile.
"""

from __future__ import annotations

import numba

_FLAGS = dict(nogil=True, cache=True, fastmath=False, error_model="numpy")


def kernel(fn=None, **overrides):
    """`@kernel`: a serial jitted function (releases the GIL)."""
    flags = {**_FLAGS, **overrides}
    return numba.njit(**flags)(fn) if fn is not None else numba.njit(**flags)


def parallel_kernel(fn=None, **overrides):
    """`@parallel_kernel`: a jitted function whose outermost loop is `numba.prange`."""
    flags = {**_FLAGS, "parallel": True, **overrides}
    return numba.njit(**flags)(fn) if fn is not None else numba.njit(**flags)
