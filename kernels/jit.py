"""The one place Numba compiler flags are chosen, and how a parallel kernel is launched.

`fastmath` stays off everywhere: verdicts must be bit-identical on every validator, and reassociated
floating point would let two machines disagree on a point that sits on a triangle edge or a speed
exactly at the limit. `cache=True` keeps compiled kernels on disk so a second process does not
recompile. Numba keys a cached kernel by its own source file's time stamp only, so a kernel whose
callee in another module changed would load stale machine code; the cache directory is therefore
keyed by stepbatch's version, Numba's and NumPy's versions and a hash of every kernel source
(`kernel_cache_dir`), unless NUMBA_CACHE_DIR names one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pathlib

import numba


def kernel_cache_dir() -> str:
    """Where compiled kernels are kept: one directory per (versions, kernel sources)."""
    digest = hashlib.sha256()
    for package in ("stepbatch", "numba", "llvmlite", "numpy"):
        try:
            digest.update(f"{package}={importlib.metadata.version(package)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{package}=?\n".encode())
    for source in sorted(pathlib.Path(__file__).resolve().parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    base = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    return str(base / "stepbatch" / "numba" / digest.hexdigest()[:24])


# Set before any kernel is decorated: Numba picks a function's cache locator when it is decorated.
if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = kernel_cache_dir()

_FLAGS = dict(nogil=True, cache=True, fastmath=False, error_model="numpy")

# Below this many rows `launch` runs a parallel kernel on the calling thread alone (see there).
PARALLEL_MIN_ROWS = 4096


def kernel(fn=None, **overrides):
    """`@kernel`: a serial jitted function (releases the GIL)."""
    flags = {**_FLAGS, **overrides}
    return numba.njit(**flags)(fn) if fn is not None else numba.njit(**flags)


def parallel_kernel(fn=None, **overrides):
    """`@parallel_kernel`: a jitted function whose outermost loop is `numba.prange`."""
    flags = {**_FLAGS, "parallel": True, **overrides}
    return numba.njit(**flags)(fn) if fn is not None else numba.njit(**flags)


def launch(kernel, rows: int, *args) -> None:
    """`kernel(*args)` for a `@parallel_kernel` over `rows` rows, on one thread when rows are few.

    Every parallel region hands work to the thread pool and waits for all of it to finish. With the
    OpenMP threading layer on a machine whose other cores are busy, that wait is a whole scheduler
    slice (~6 ms measured on 2 cores) before a second thread even starts, far more than a batch of a
    few thousand rows costs on one thread; idle, the hand-off still costs more than small work. So
    below PARALLEL_MIN_ROWS rows the call runs with the thread count set to 1, which keeps the region
    on the calling thread. Numba's thread count is per calling thread, so concurrent callers on other
    threads are unaffected; the caller's own count is restored afterwards.
    """
    if rows >= PARALLEL_MIN_ROWS:
        kernel(*args)
        return
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        kernel(*args)
    finally:
        numba.set_num_threads(threads)
