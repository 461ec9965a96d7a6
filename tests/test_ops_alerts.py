"""The shipped alert rules and dashboards against a real Prometheus (SPEC §11): promtool accepts them;
scraping a real `stepbatch serve`, every service dashboard expression returns series and ServiceDown
fires when the service stops and resolves when it is back; scraping a real four-validator localnet
(CometBFT's metrics and the apps'), every consensus and app dashboard expression returns series,
ValidatorOffline fires for a killed node, ConsensusStalled when two of four are down, and both resolve
when `localnet up` restarts them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from stepbatch.abci.localnet import cometbft_binary
from tests.processes import ROOT, server_process, wait_until
from tests.prometheus import RULES, Prometheus, dashboard_expressions, free_port, promtool, render_rules
from tests.strategies import ACCOUNT_KEYS
from tests.test_service import REGION, proof

pytestmark = pytest.mark.slow

ALERT_WAIT_S = 90  # the scaled `for:` and windows are seconds; a loaded machine scrapes late


@pytest.fixture(scope="module")
def prometheus_installed():
    if not promtool().exists() or not (promtool().parent / "prometheus").exists():
        pytest.fail("Prometheus is part of the set-up: run scripts/setup-prometheus (scripts/test does)")


def test_promtool_accepts_the_shipped_rules_and_their_test_rendering(prometheus_installed, tmp_path):
    checked = subprocess.run([str(promtool()), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 10 rules found" in checked.stdout
    config = subprocess.run([str(promtool()), "check", "config", str(ROOT / "ops" / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr
    rendered = tmp_path / "alerts.yml"
    rendered.write_text(render_rules(RULES.read_text()))
    assert subprocess.run([str(promtool()), "check", "rules", str(rendered)], capture_output=True).returncode == 0
    assert "[6s]" in rendered.read_text() and "for: 3s" in rendered.read_text()


@pytest.mark.mongo
def test_service_dashboard_has_series_and_service_down_fires_then_resolves(
        prometheus_installed, mongo_uri, mongo_db_name, mongo_store, tmp_path):
    mongo_store.declare(REGION)
    port = free_port()
    args = ["--mongodb-uri", mongo_uri, "serve", "--port", str(port), "--db", mongo_db_name]
    prometheus = None
    try:
        with server_process(args) as service:
            prometheus = Prometheus(tmp_path / "prometheus", {"stepbatch-service": [f"127.0.0.1:{port}"]})
            with httpx.Client(base_url=service.url, timeout=60) as client:
                wait_until(lambda: client.get("/ready").status_code == 200, what="/ready")
                for key in ACCOUNT_KEYS:
                    assert client.post("/proof/submit", json=proof(key)).status_code == 200
                assert client.post("/proof/submit", content=b"{not json").status_code == 400
            wait_until(lambda: prometheus.query('stepbatch_answer_seconds_count{job="stepbatch-service"} >= 4'),
                       timeout_s=ALERT_WAIT_S, what="Prometheus to scrape the answered proofs")
            wait_until(lambda: prometheus.query('stepbatch_http_refused_total{job="stepbatch-service"}'),
                       timeout_s=ALERT_WAIT_S, what="Prometheus to scrape the refusal")
            _every_panel_has_series(prometheus, "stepbatch-service")
            assert not prometheus.firing("ServiceDown")
        wait_until(lambda: prometheus.firing("ServiceDown", instance=f"127.0.0.1:{port}"),
                   timeout_s=ALERT_WAIT_S, every_s=0.5, what="ServiceDown to fire")
        with server_process(args):
            wait_until(lambda: not prometheus.alerts("ServiceDown"), timeout_s=ALERT_WAIT_S, every_s=0.5,
                       what="ServiceDown to resolve")
    finally:
        if prometheus is not None:
            prometheus.close()


def _every_panel_has_series(prometheus: Prometheus, dashboard: str) -> None:
    """Every expression of the dashboard returns series, once Prometheus has the two samples a rate
    needs; the panels still empty at the deadline are named."""
    deadline = time.monotonic() + ALERT_WAIT_S
    while True:
        empty = [(title, expr) for title, expr in dashboard_expressions(dashboard) if not prometheus.query(expr)]
        if not empty:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{dashboard}: panels without series: {empty}")
        time.sleep(0.5)


def _localnet(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "stepbatch", "localnet", *args], cwd=ROOT, text=True,
                            capture_output=True, timeout=300,
                            env={**os.environ, "STEPBATCH_SIGNATURE_THREADS": "1"})
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _address(url: str) -> str:
    return url.removeprefix("http://").removesuffix("/metrics")


@pytest.mark.consensus
def test_validator_offline_and_consensus_stalled_fire_and_resolve(prometheus_installed, tmp_path):
    try:
        cometbft_binary()
    except Exception as err:
        pytest.fail(f"CometBFT is part of the set-up (scripts/bootstrap): {err}")
    directory = tmp_path / "net"
    prometheus = None
    try:
        _localnet("up", "--dir", str(directory), "--validators", "4", "--levels", "13-14",
                  "--bbox", "19.0,47.45,19.1,47.55")
        nodes = json.loads((directory / "localnet.json").read_text())["nodes"]
        cometbft = [_address(node["metrics"]["cometbft"]) for node in nodes]
        apps = [_address(node["metrics"]["app"]) for node in nodes]
        prometheus = Prometheus(tmp_path / "prometheus", {"cometbft": cometbft, "stepbatch-abci": apps})
        wait_until(lambda: prometheus.targets_up("cometbft") == 4, timeout_s=ALERT_WAIT_S, what="4 nodes scraped")
        wait_until(lambda: prometheus.query('changes(cometbft_consensus_height{job="cometbft"}[6s]) > 0'),
                   timeout_s=ALERT_WAIT_S, what="blocks to be seen committed")
        _every_panel_has_series(prometheus, "stepbatch-consensus")
        _every_panel_has_series(prometheus, "stepbatch-abci")
        assert not prometheus.firing("ValidatorOffline") and not prometheus.firing("ConsensusStalled")

        _localnet("down", "--dir", str(directory), "--node", "3")
        wait_until(lambda: prometheus.firing("ValidatorOffline", instance=cometbft[3]), timeout_s=ALERT_WAIT_S,
                   every_s=0.5, what="ValidatorOffline to fire for node 3")
        # Three of four validators (3/4 of the power) still make blocks.
        assert not prometheus.firing("ConsensusStalled")

        _localnet("down", "--dir", str(directory), "--node", "2")
        wait_until(lambda: prometheus.firing("ConsensusStalled"), timeout_s=ALERT_WAIT_S, every_s=0.5,
                   what="ConsensusStalled to fire with two of four validators down")

        _localnet("up", "--dir", str(directory))
        wait_until(lambda: not prometheus.alerts("ConsensusStalled") and not prometheus.alerts("ValidatorOffline"),
                   timeout_s=ALERT_WAIT_S, every_s=0.5, what="ConsensusStalled and ValidatorOffline to resolve")
    finally:
        if prometheus is not None:
            prometheus.close()
        if (directory / "localnet.json").exists():
            _localnet("down", "--dir", str(directory), check=False)


def test_app_dashboard_expressions_name_the_metrics_the_app_exports():
    """Every metric the ABCI dashboard reads is one `stepbatch.abci.metrics.AppMetrics` defines."""
    from prometheus_client import CollectorRegistry

    from stepbatch.abci.metrics import AppMetrics

    registry = CollectorRegistry()
    AppMetrics(registry)
    exported = {sample.name for family in registry.collect() for sample in family.samples}
    exported |= {family.name + suffix for family in registry.collect() for suffix in ("_bucket", "_total")}
    for title, expr in dashboard_expressions("stepbatch-abci"):
        names = set(re.findall(r"\b(stepbatch_abci_[a-z_]+)", expr))
        assert names and names <= exported, f"{title}: {names - exported}"
