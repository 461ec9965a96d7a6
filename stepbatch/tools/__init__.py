"""Tools built on the validator core: the traffic generator (`gen`), the load test (`loadtest`, with the
original one-proof-per-transaction design in `baseline`), offline `replay` and its `report`.

Nothing in the core (ingest, checks, crypto, mesh, resolve, verdicts, store, validator) imports from here.
"""
