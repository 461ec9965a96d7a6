"""`stepbatch bench`: the load test, side by side on the same cores and the same signed traffic.

(a) the libsecp256k1 ceiling (`secp256k1.ceiling_seconds`: a bare coincurve loop, one thread per core);
(b) stepbatch validate-only against a MemoryStore; (c) stepbatch end to end, each batch committed to the
embedded database (or MONGODB_URI); (d) the original one-proof-per-request design (stepbatch.tools.baseline).
b and c run closed loop (capacity) and, in open mode, open loop at --rate for --duration and at every
--sweep rate. Every committing run gets a database of its own, so that counting its click events proves
that no accepted proof was lost.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import pathlib
import shlex
import sys
import tempfile
import time
import uuid

import numpy as np

from stepbatch.cli import UsageError
from stepbatch.tools.benchreport import best, report_ratios, signature_ceiling

_QUICK = dict(duration=5.0, sweep_duration=3.0, closed_proofs=3_000, baseline_proofs=200, walkers=100)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="load test: stepbatch against the signature ceiling and the original design",
        description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--mode", choices=("open", "closed"), default="open",
                        help="open: closed-loop capacity plus open-loop runs at fixed rates (default); "
                             "closed: capacity only")
    parser.add_argument("--rate", type=float, default=1_000.0, help="offered proofs/s of the sustained run (1000)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of the sustained run (60)")
    parser.add_argument("--sweep", type=_floats, default=[], metavar="R1,R2,...",
                        help="offered rates of further open-loop runs, e.g. 500,2000,5000,10000")
    parser.add_argument("--sweep-duration", type=float, default=None, help="seconds per sweep rate (10)")
    parser.add_argument("--batch-size", type=_ints, default=[2_000], metavar="N[,N...]",
                        help="batch sizes; several values sweep them (2000)")
    parser.add_argument("--max-wait-ms", type=_floats, default=[250.0], metavar="MS[,MS...]",
                        help="maximum waits; several values sweep them (250)")
    parser.add_argument("--process", choices=("uniform", "poisson"), default="poisson",
                        help="arrival process of open-loop runs (poisson)")
    parser.add_argument("--closed-proofs", type=int, default=None, help="proofs per closed-loop run (20000)")
    parser.add_argument("--baseline-proofs", type=int, default=None, help="proofs through design d (2000)")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run design d")
    parser.add_argument("--skip-database", action="store_true", help="do not run configuration c")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration; min-max shown (1)")
    parser.add_argument("--walkers", type=int, default=None, help="walkers of the generated traffic (1000)")
    parser.add_argument("--seed", type=int, default=1, help="traffic seed (1)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 5 s sustained, 3 s per sweep rate, small closed-loop and baseline runs")
    parser.add_argument("--target", default=None, metavar="URL|cometbft",
                        help="drive a running `stepbatch serve` at URL over HTTP, or (`cometbft`) a CometBFT "
                             "network at --rpc, instead of in-process configurations b-d (with --mongodb-uri, "
                             "the traffic's triangles are declared in that database first, named by --db or "
                             "$STEPBATCH_DB; a network gets its mesh at genesis)")
    parser.add_argument("--rpc", default=None, metavar="URL[,URL…]",
                        help="with --target cometbft: the nodes' RPC endpoints, e.g. from localnet.json")
    parser.add_argument("--broadcast", choices=("sync", "async"), default="sync",
                        help="with --target cometbft: broadcast_tx_sync (CheckTx answered) or _async (sync)")
    parser.add_argument("--tx-proofs", type=int, default=100, metavar="N",
                        help="with --target cometbft: proofs per transaction, a ProofBatch of N (1-1000; 1 sends "
                             "one-proof transactions) (100)")
    parser.add_argument("--connections", type=int, default=256,
                        help="concurrent HTTP connections with --target (256)")
    parser.add_argument("--db", default=None, help="database of the target service, with --mongodb-uri")
    parser.add_argument("--out-dir", default=str(pathlib.Path("benchmarks") / "results"),
                        help="where the JSON and PNG go (benchmarks/results)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stepbatch.config import Config

    _fill_defaults(args)
    command = "stepbatch " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("stepbatch") else \
        shlex.join(["python", "-m", "stepbatch", *sys.argv[1:]])
    config = Config.from_env(mongodb_uri=args.mongodb_uri, **({"db_name": args.db} if args.db else {}))
    load_before = os.getloadavg()
    if args.target == "cometbft":
        from stepbatch.cli import bench_consensus
        report = bench_consensus.measure(args, config)
        database = f"the CometBFT network at {args.rpc}"
    elif args.target:
        from stepbatch.cli import bench_http
        report = bench_http.measure(args, config)
        database = f"the service at {args.target}"
    else:
        report, database = _measure_here(args, config)
    report.update(command=command, started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  cores=os.cpu_count(), load_average_before=load_before, load_average_after=os.getloadavg(),
                  database=database, params={k: v for k, v in vars(args).items() if k != "func"})
    print(_markdown(report))
    _write(report, pathlib.Path(args.out_dir))
    return 0


def _measure_here(args, config) -> tuple[dict, str]:
    from stepbatch.store import servers
    from stepbatch.store.embedded import EmbeddedServer

    traffic = _traffic(args)
    with tempfile.TemporaryDirectory(prefix="stepbatch-bench-") as data_dir:
        server = None
        uri = config.mongodb_uri
        if not uri and not (args.skip_database and args.skip_baseline):
            server = EmbeddedServer(data_dir).start()
            uri = server.uri
        try:
            report = _measure(args, config, traffic, uri)
        finally:
            if server is not None:
                server.close()
    return report, "MONGODB_URI" if config.mongodb_uri else f"embedded {servers.chosen().title}"


def _fill_defaults(args) -> None:
    full = dict(duration=60.0, sweep_duration=10.0, closed_proofs=20_000, baseline_proofs=2_000, walkers=1_000)
    for name, value in (_QUICK if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.rate <= 0 or args.duration <= 0 or any(r <= 0 for r in args.sweep):
        raise UsageError("--rate, --duration and --sweep rates must be positive")
    if args.repeats < 1 or min(args.batch_size) < 1 or min(args.max_wait_ms) < 0:
        raise UsageError("--repeats and --batch-size must be at least 1, --max-wait-ms at least 0")


def _traffic(args):
    from stepbatch.tools import gen

    open_rows = [args.rate * args.duration] + [rate * args.sweep_duration for rate in args.sweep]
    rows = int(max(args.closed_proofs, args.baseline_proofs, *(open_rows if args.mode == "open" else [])))
    started = time.perf_counter()
    traffic = gen.generate(walkers=args.walkers, proofs=rows, seed=args.seed)
    print(f"generated {rows:,} signed proofs of {args.walkers:,} walkers in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    return traffic


def _measure(args, config, traffic, uri) -> dict:
    from stepbatch.store.memory import MemoryStore
    from stepbatch.validator import Validator

    proofs = traffic.proofs
    with Validator(MemoryStore(traffic.triangles), config) as warm:
        warm.validate(proofs.slice(0, 500))  # compile and load the kernels before anything is timed
    report: dict = {"ceiling": signature_ceiling(proofs.slice(0, args.closed_proofs), config.threads,
                                                 args.repeats),
                    "runs": []}
    configurations = [("b", False)] + ([] if args.skip_database else [("c", True)])
    plans = [("closed", None, args.closed_proofs)]
    if args.mode == "open":
        plans += [("open", args.rate, int(args.rate * args.duration))]
        plans += [("open", rate, int(rate * args.sweep_duration)) for rate in args.sweep if rate != args.rate]
    for label, commit in configurations:
        for mode, rate, rows in plans:
            waits = args.max_wait_ms if mode == "open" else args.max_wait_ms[:1]  # no wait in closed loop
            for batch_size, max_wait_ms in itertools.product(args.batch_size, waits):
                runs = [_load_run(args, config, traffic, uri, label, commit, mode, rate, rows, batch_size,
                                  max_wait_ms, repeat) for repeat in range(args.repeats)]
                report["runs"].append({"config": label, "repeats": [r.summary() for r in runs]})
    if not args.skip_baseline:
        report["baseline"] = _baseline(traffic, uri, config, args.baseline_proofs, args.repeats)
    report["ratios"] = report_ratios(report)
    return report


def _load_run(args, config, traffic, uri, label, commit, mode, rate, rows, batch_size, max_wait_ms, repeat):
    from stepbatch.tools.loadtest import MicroBatcher, arrival_offsets_s
    from stepbatch.validator import Validator

    batch = traffic.proofs.slice(0, rows)
    with _RunStore(label, traffic, uri, config) as store, Validator(store, config) as validator:
        batcher = MicroBatcher(validator, batch_size, max_wait_ms, commit=commit,
                               run_id=f"bench-{label}-{uuid.uuid4().hex[:8]}")
        if mode == "closed":
            run = batcher.run_closed(batch)
        else:
            run = batcher.run_open(batch, arrival_offsets_s(rows, rate, args.process, seed=repeat), rate)
    print(f"{label} {mode} rate={rate} batch={batch_size} wait={max_wait_ms} ms: "
          f"{run.throughput_per_s:,.0f} proofs/s, lost {run.lost}", file=sys.stderr)
    return run


class _RunStore:
    """A MemoryStore (b), or a MongoStore on a database of its own that is dropped afterwards (c, d)."""

    def __init__(self, label, traffic, uri, config):
        self.label, self.traffic, self.uri, self.config = label, traffic, uri, config

    def __enter__(self):
        from stepbatch.mesh.regions import IdRegion
        from stepbatch.store.memory import MemoryStore
        from stepbatch.store.mongo import MongoStore

        if self.label == "b":
            self.store = MemoryStore(self.traffic.triangles)
            return self.store
        self.name = f"stepbatch_bench_{uuid.uuid4().hex[:12]}"
        self.store = MongoStore(self.uri, self.name, config=self.config)
        self.store.declare(IdRegion.of_ids(self.traffic.triangles))
        return self.store

    def __exit__(self, *exc):
        if self.label != "b":
            self.store.client.drop_database(self.name)
        self.store.close()


def _baseline(traffic, uri, config, rows: int, repeats: int) -> dict:
    from stepbatch.tools.baseline import OriginalServer
    from stepbatch.tools.loadtest import count_committed_clicks

    requests = traffic.proofs.slice(0, rows)
    runs = []
    for _ in range(repeats):
        with _RunStore("d", traffic, uri, config) as store:
            run = OriginalServer(store, config).run(requests)
            accepted = int(run.counts().get("ACCEPTED", 0))
            committed = count_committed_clicks(store)
        latency_ms = run.latency_s * 1000.0
        runs.append({"proofs": rows, "throughput_per_s": run.throughput_per_s, "elapsed_s": run.elapsed_s,
                     "latency_ms": dict(zip(("p50", "p95", "p99"),
                                            np.percentile(latency_ms, (50, 95, 99)).tolist())),
                     "counts": run.counts(), "accepted": accepted, "committed_clicks": committed,
                     "lost": max(accepted - committed, 0), "stage_s": run.stage_s})
        print(f"d closed: {run.throughput_per_s:,.0f} proofs/s", file=sys.stderr)
    return {"repeats": runs}


def _span(values: list[float], fmt: str = "{:,.0f}") -> str:
    low, high = min(values), max(values)
    return fmt.format(high) if len(values) == 1 else f"{fmt.format(high)} ({fmt.format(low)}–{fmt.format(high)})"


def _markdown(report: dict) -> str:
    lines = [f"`{report['command']}`", "",
             f"cores: {report['cores']}, database: {report['database']}, load average before/after: "
             f"{report['load_average_before'][0]:.2f} / {report['load_average_after'][0]:.2f}", "",
             "| config | mode | offered /s | batch | wait ms | proofs | throughput /s | p50 ms | p95 ms "
             "| p99 ms | lost |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    ceiling = report["ceiling"]
    if "per_s" in ceiling:
        lines.append(f"| a: libsecp256k1 ceiling | closed | | | | {ceiling['recoveries']:,} "
                     f"| {_span(ceiling['per_s'])} | | | | |")
    names = {"b": "b: stepbatch validate-only", "c": "c: stepbatch + commit", "s": "s: stepbatch serve, HTTP",
             "n": "n: through CometBFT"}
    for run in report["runs"]:
        reps = run["repeats"]
        first = reps[0]
        until = "verdict_latency_ms" if run["config"] == "b" else "commit_latency_ms"
        cells = [_span([r[until][q] for r in reps], "{:,.0f}") for q in ("p50", "p95", "p99")]
        offered = f"{first['offered_per_s']:,.0f}" if first["offered_per_s"] else ""
        batch = f"{first['batch_size']:,}" if first["batch_size"] else "service's"
        wait = f"{first['max_wait_ms']:g}" if first["max_wait_ms"] == first["max_wait_ms"] else "service's"
        lines.append(f"| {names[run['config']]} | {first['mode']} | {offered} | {batch} "
                     f"| {wait} | {first['proofs']:,} | {_span([r['throughput_per_s'] for r in reps])} "
                     f"| {' | '.join(cells)} | {max(r['lost'] for r in reps)} |")
    if "baseline" in report:
        reps = report["baseline"]["repeats"]
        cells = [_span([r["latency_ms"][q] for r in reps], "{:,.1f}") for q in ("p50", "p95", "p99")]
        lines.append(f"| d: one proof per request | closed | | 1 | | {reps[0]['proofs']:,} "
                     f"| {_span([r['throughput_per_s'] for r in reps])} | {' | '.join(cells)} "
                     f"| {max(r['lost'] for r in reps)} |")
    lines += ["", "Latency: arrival → verdict for b, arrival → committed for c, request → committed for d, "
                  "request → response (sent once committed) for s, submit → block seen committed for n."]
    for name, value in report["ratios"].items():
        lines.append(f"- {name}: " + ("none" if value is None else f"{value:,.2f}"))
    for run, blocks in zip(report["runs"], report.get("blocks", ())):
        lines.append(f"- blocks ({run['repeats'][0]['mode']} loop): {blocks['blocks']} blocks, "
                     f"{blocks['blocks_with_txs']} with proofs ({blocks['mean_txs_per_full_block']:,.0f} each), "
                     f"{blocks['blocks_per_s']:.2f} blocks/s, stepbatch "
                     f"{blocks['stepbatch_share_of_block_time']:.0%} of block time (the rest CometBFT)")
    for run in report["runs"]:
        if run["config"] == "c" and run["repeats"][0]["mode"] == "closed":
            stages = run["repeats"][0]["stage_s"]
            total = sum(stages.values()) or 1.0
            shares = ", ".join(f"{stage} {seconds:.1f} s ({seconds / total:.0%})" for stage, seconds
                               in sorted(stages.items(), key=lambda item: -item[1]))
            lines.append(f"- where c's time goes (closed loop, batches of "
                         f"{run['repeats'][0]['batch_size']:,}): {shares}")
    return "\n".join(lines)


def _write(report: dict, out_dir: pathlib.Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = out_dir / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"\nJSON: {json_path}")
    open_runs = [r for r in report["runs"] if r["repeats"][0]["mode"] == "open"]
    if not open_runs:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput_axis, latency_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, until in (("b", "verdict_latency_ms"), ("c", "commit_latency_ms"), ("s", "commit_latency_ms"),
                         ("n", "commit_latency_ms")):
        points = sorted((r["repeats"][0]["offered_per_s"], best(r["repeats"]),
                         min(x[until]["p99"] for x in r["repeats"])) for r in open_runs if r["config"] == label)
        if points:
            offered, throughput, p99 = zip(*points)
            name = {"b": "b validate-only", "c": "c + commit", "s": "s serve over HTTP", "n": "n CometBFT"}[label]
            throughput_axis.plot(offered, throughput, "o-", label=name)
            latency_axis.plot(offered, p99, "o-", label=name)
    throughput_axis.plot(*([[min(r["repeats"][0]["offered_per_s"] for r in open_runs),
                             max(r["repeats"][0]["offered_per_s"] for r in open_runs)]] * 2), "k:", label="offered")
    throughput_axis.set(xlabel="offered proofs/s", ylabel="proofs/s", title="throughput", xscale="log", yscale="log")
    latency_axis.axhline(1_000, color="grey", linestyle=":")
    latency_axis.set(xlabel="offered proofs/s", ylabel="p99 latency, ms", title="p99 latency", xscale="log",
                     yscale="log")
    for axis in (throughput_axis, latency_axis):
        axis.legend()
        axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    png_path = out_dir / f"bench-{stamp}.png"
    figure.savefig(png_path, dpi=110)
    print(f"PNG: {png_path}")


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
