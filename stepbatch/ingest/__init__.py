"""Stage 1, ingest: any source of proofs → one Arrow table in `schema.PROOF_SCHEMA` (SPEC §2).

`sources` finds and reads inputs (paths, bytes, dicts, Arrow, Polars), `ndjson` frames line-numbered
rows, `table` assembles PROOF_SCHEMA tables, `fields` holds the §2 field rules and `timestamps` the
ISO-8601 parser they use. A row that breaks a rule keeps its place, with the reason in `payload_error`.
"""

from stepbatch.ingest.sources import (
    ProofChunk,
    ProofSourceError,
    iter_proofs,
    read_proofs,
)

__all__ = ["read_proofs", "iter_proofs", "ProofChunk", "ProofSourceError"]
