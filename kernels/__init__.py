"""Numba kernels over NumPy arrays: mesh geometry, hashing, gates and the stateful resolver.

Nothing here imports pyarrow, pymongo or coincurve; the `stepbatch` modules wrap these kernels.
"""
