"""The validator as an HTTP service (SPEC §7): `app` (routes for proofs), `reads` (mesh and account
routes), `batcher` (the micro-batcher every proof goes through), `server` (uvicorn)."""
