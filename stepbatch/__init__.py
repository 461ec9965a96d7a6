"""stepbatch: the vectorized batch validator of the STEP proof-of-location protocol.

The public API of SPEC §6. Names resolve on first use so that `import stepbatch` stays cheap for the
command line (Numba and coincurve load only when a stage needs them).
"""

from __future__ import annotations

import importlib

__all__ = ["read_proofs", "Validator", "BatchResult", "Config", "MemoryStore", "MongoStore", "mesh",
           "crypto"]

_HOMES = {
    "read_proofs": "stepbatch.ingest",
    "Validator": "stepbatch.validator",
    "BatchResult": "stepbatch.validator",
    "Config": "stepbatch.config",
    "MemoryStore": "stepbatch.store.memory",
    "MongoStore": "stepbatch.store.mongo",
}


def __getattr__(name: str):
    if name in ("mesh", "crypto"):
        return importlib.import_module(f"stepbatch.{name}")
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'stepbatch' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
