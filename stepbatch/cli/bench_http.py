"""`stepbatch bench --target URL`: the load test against a running service, over HTTP (`s` in the table).

The traffic is generated to start a few seconds from now in real time, so that the proofs' own
timestamps agree with when they are sent (the service measures CLOCK_DRIFT against arrival). Open
loop: walkers enough for --rate (a walker proves every 35 s on average, attacks in between), for
--duration seconds, each proof sent at its generated arrival time. Closed loop: --closed-proofs
proofs of walkers who prove about four times each, sent back to back on --connections connections.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
import time
import urllib.error
import urllib.request

from stepbatch.cli import UsageError
from stepbatch.tools.benchreport import (
    PROOFS_PER_WALKER_S,
    declare_traffic,
    report_ratios,
    signature_ceiling,
)

_LEAD_S = 3.0  # set-up time between generating the traffic and sending its first proof


def measure(args, config) -> dict:
    _check_target(args.target)
    plans = [("closed", None)]
    if args.mode == "open":
        plans += [("open", args.rate)] + [("open", rate) for rate in args.sweep if rate != args.rate]
    report: dict = {"runs": []}
    ceiling_traffic = None
    for mode, rate in plans:
        repeats = []
        for repeat in range(args.repeats):
            traffic, run = _one_run(args, config, mode, rate, repeat)
            ceiling_traffic = ceiling_traffic or traffic
            print(f"s {mode} rate={rate}: {run.throughput_per_s:,.0f} proofs/s, lost {run.lost}, "
                  f"codes {dict(sorted(run.counts.items()))}", file=sys.stderr)
            repeats.append(run.summary())
        report["runs"].append({"config": "s", "repeats": repeats})
    report["ceiling"] = signature_ceiling(ceiling_traffic.proofs.slice(0, args.closed_proofs), config.threads,
                                          args.repeats)
    report["ratios"] = report_ratios(report)
    return report


def _check_target(url: str) -> None:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/ready", timeout=10) as response:
            if response.status == 200:
                return
    except (urllib.error.URLError, OSError) as err:
        raise UsageError(f"--target {url}: the service does not answer /ready ({err})") from err
    raise UsageError(f"--target {url}: the service is not ready")


def _one_run(args, config, mode: str, rate: float | None, repeat: int):
    from stepbatch.tools import gen
    from stepbatch.tools.httpload import HttpLoad, arrival_offsets, request_bodies

    if mode == "open":
        walkers = max(1, math.ceil(rate / PROOFS_PER_WALKER_S))
        duration = args.duration if rate == args.rate else args.sweep_duration
        rows_hint = rate * duration
    else:
        walkers, duration, rows_hint = max(10, args.closed_proofs // 4), None, args.closed_proofs
    lead_s = _LEAD_S + rows_hint / 20_000  # generation and signing run at ~50k proofs/s
    start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=lead_s)
    traffic = gen.generate(walkers=walkers, proofs=None if duration else args.closed_proofs,
                           duration_s=duration, seed=args.seed * 1_000_003 + int(start.timestamp()) + repeat,
                           start_time=start)
    declare_traffic(args, config, traffic)
    bodies = request_bodies(traffic.proofs)
    load = HttpLoad(args.target, connections=args.connections)
    offsets = arrival_offsets(traffic.proofs)
    first_ms = int(traffic.proofs.column("received_at")[0].value)
    wait_s = first_ms / 1000.0 - time.time()
    if wait_s > 0:
        time.sleep(wait_s)
    if mode == "open":
        return traffic, load.run_open(bodies, offsets, offered_per_s=len(bodies) / max(offsets[-1], 1e-9))
    return traffic, load.run_closed(bodies)
