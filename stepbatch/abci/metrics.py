"""The ABCI app's Prometheus metrics (SPEC §11), beside CometBFT's own.

CometBFT exports consensus (`cometbft_consensus_height`, `cometbft_consensus_missing_validators`,
`cometbft_p2p_peers`, …) on its `prometheus_listen_addr`; these say what the application did with
the blocks: the height it committed, how long a block took to validate and to commit, the verdicts,
how often a proof's signature was found in the memo, the validator set it computed and the
slashing it applied. The names are the ones `ops/prometheus/alerts.yml` and the dashboards read.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_BLOCK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class AppMetrics:
    """One per app process, in `registry` (the default registry, which `start_exporter` serves)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.registry = registry
        r = registry
        self.height = Gauge("stepbatch_abci_height", "Last block height the app committed", registry=r)
        self.block_validate = Histogram(
            "stepbatch_abci_block_validate_seconds", "FinalizeBlock: validating a block's batch",
            buckets=_BLOCK_BUCKETS_S, registry=r)
        self.block_commit = Histogram(
            "stepbatch_abci_block_commit_seconds", "Commit: writing a block's batch in one transaction",
            buckets=_BLOCK_BUCKETS_S, registry=r)
        self.block_proofs = Histogram(
            "stepbatch_abci_block_proofs", "Proofs per block", registry=r,
            buckets=(0, 1, 10, 100, 1000, 5000, 10000, 25000, 50000, 100000))
        self.proofs = Counter("stepbatch_abci_proofs", "Proofs finalized in blocks, by verdict code",
                              ["code"], registry=r)
        self.commit_errors = Counter("stepbatch_abci_commit_errors", "Blocks whose commit failed", registry=r)
        self.check_tx = Counter("stepbatch_abci_check_tx", "CheckTx answers, by admitted or refused",
                                ["result"], registry=r)
        self.memo_hits = Counter("stepbatch_abci_signature_memo_hits",
                                 "Signatures found in the recovery memo", registry=r)
        self.memo_misses = Counter("stepbatch_abci_signature_memo_misses",
                                   "Signatures recovered because the memo did not hold them", registry=r)
        self.validators = Gauge("stepbatch_abci_validators", "Validators in the set with power > 0", registry=r)
        self.validator_power = Gauge("stepbatch_abci_validator_power", "Total voting power of the set",
                                     registry=r)
        self.jailed = Gauge("stepbatch_abci_validators_jailed", "Validators jailed now", registry=r)
        self.slashing = Counter("stepbatch_abci_slashing_events",
                                "Slashing, jailing and tombstoning events, by reason", ["reason"], registry=r)
        for code in ("ACCEPTED",):
            self.proofs.labels(code=code)
        for reason in ("double_sign", "downtime"):
            self.slashing.labels(reason=reason)

    def block_finalized(self, counts: dict[str, int], validate_s: float) -> None:
        """FinalizeBlock done: the verdicts by code and the seconds it took."""
        self.block_validate.observe(validate_s)
        self.block_proofs.observe(sum(counts.values()))
        for code, n in counts.items():
            if n:
                self.proofs.labels(code=code).inc(n)

    def block_committed(self, height: int, commit_s: float) -> None:
        self.block_commit.observe(commit_s)
        self.height.set(height)

    def memo_lookups(self, hits: int, misses: int) -> None:
        if hits:
            self.memo_hits.inc(hits)
        if misses:
            self.memo_misses.inc(misses)

    def validator_set(self, powers: dict[str, int], jailed: int) -> None:
        """The set after a block: operator → power (0 for one out of the set), and how many are jailed."""
        active = [power for power in powers.values() if power > 0]
        self.validators.set(len(active))
        self.validator_power.set(sum(active))
        self.jailed.set(jailed)

    def slashed(self, reason: str, n: int = 1) -> None:
        """`reason` is `double_sign` or `downtime`, as the evidence record says."""
        self.slashing.labels(reason=reason).inc(n)


def start_exporter(address: str, registry: CollectorRegistry = REGISTRY) -> tuple[str, int]:
    """Serve `registry` at http://HOST:PORT/metrics on a daemon thread; `address` is HOST:PORT (port 0
    takes a free one). Returns the (host, port) it listens on; OSError when it cannot listen."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"a metrics address is HOST:PORT, got {address!r}")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return server.server_address[:2]
