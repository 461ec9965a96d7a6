"""A real Prometheus server for the ops tests: the shipped rules with their durations scaled down,
scraping real stepbatch and CometBFT processes every second, and asked through its HTTP API."""

from __future__ import annotations

import json
import pathlib
import re
import socket
import subprocess
import sys

import httpx

from tests.processes import ROOT, wait_until

OPS = ROOT / "ops"
RULES = OPS / "prometheus" / "alerts.yml"
DASHBOARDS = OPS / "dashboards"
BIN = pathlib.Path(sys.executable).parent
# Production windows and `for:` durations divided by this: 1m → 3 s, 2m → 6 s, 5m → 15 s.
TIME_SCALE = 20
_DURATION = re.compile(r"(\[|for: )(\d+)([smh])(\])?")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}


def render_rules(text: str, scale: int = TIME_SCALE) -> str:
    """The rules with every range window and `for:` divided by `scale` (at least 2 s: a window needs
    two 1 s scrapes)."""
    def scaled(match: re.Match) -> str:
        seconds = max(2, int(match[2]) * _UNIT_S[match[3]] // scale)
        return f"{match[1]}{seconds}s{match[4] or ''}"
    return _DURATION.sub(scaled, text)


def free_port() -> int:
    """A loopback port free now, for a program that takes its port on the command line."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def promtool() -> pathlib.Path:
    return BIN / "promtool"


class Prometheus:
    """`prometheus` on a free loopback port with `jobs` (name → ["host:port", …]) scraped every second
    and the shipped rules rendered by `render_rules` evaluated every second."""

    def __init__(self, directory: pathlib.Path, jobs: dict[str, list[str]]):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "alerts.yml").write_text(render_rules(RULES.read_text()))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in jobs.items()],
        }
        (directory / "prometheus.yml").write_text(json.dumps(config, indent=1))
        self.log_path = directory / "prometheus.log"
        self.log = open(self.log_path, "wb")
        port = free_port()
        self.process = subprocess.Popen(
            [str(BIN / "prometheus"), f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=directory)
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=10)
        wait_until(self._ready, timeout_s=60, what="Prometheus to be ready")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError("prometheus exited:\n" + self.log_path.read_text()[-3000:])
        try:
            return self.client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> list[dict]:
        answer = self.client.get("/api/v1/query", params={"query": expr}).json()
        if answer.get("status") != "success":
            raise AssertionError(f"{expr}: {answer}")
        return answer["data"]["result"]

    def alerts(self, name: str) -> list[dict]:
        """The alert's instances, each with its `state` (pending, firing) and labels."""
        rules = self.client.get("/api/v1/rules", params={"type": "alert"}).json()["data"]["groups"]
        return [alert for group in rules for rule in group["rules"] if rule["name"] == name
                for alert in rule.get("alerts", ())]

    def firing(self, name: str, **labels) -> bool:
        return any(alert["state"] == "firing" and all(alert["labels"].get(k) == v for k, v in labels.items())
                   for alert in self.alerts(name))

    def targets_up(self, job: str) -> int:
        return sum(int(float(series["value"][1])) for series in self.query(f'up{{job="{job}"}}'))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()
        self.log.close()


def dashboard_expressions(name: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of a shipped dashboard."""
    dashboard = json.loads((DASHBOARDS / f"{name}.json").read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
