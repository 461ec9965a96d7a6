"""What the three bench front doors share (`stepbatch bench` in process, `--target URL` over HTTP,
`--target cometbft` through a validator network): the libsecp256k1 ceiling of these cores, the
ratios of a report, the offered rate a walker gives, and declaring the traffic's triangles."""

from __future__ import annotations

# Proofs per second that one walker sends on average, measured on generated traffic (gen's walkers
# prove every 10.5-60 s, with attacks in between): offered rates of 575/1000, 141/300 and 946/2000
# per second came from the first estimate, 1.25/35.25.
PROOFS_PER_WALKER_S = 1 / 56


def signature_ceiling(proofs, threads: int, repeats: int) -> dict:
    from stepbatch.crypto import eip191, hexcodec, secp256k1

    parsed = hexcodec.parse_signatures(proofs.column("signature"))
    digests = eip191.eip191_digests(eip191.canonical_messages(proofs))[parsed.valid]
    signatures = parsed.sig65[parsed.valid]
    digest_list, signature_list = [d.tobytes() for d in digests], [s.tobytes() for s in signatures]
    seconds = [secp256k1.ceiling_seconds(digest_list, signature_list, threads) for _ in range(repeats)]
    rates = [len(digest_list) / s for s in seconds]
    return {"recoveries": len(digest_list), "threads": threads, "per_s": rates}


def best(repeats: list[dict], key: str = "throughput_per_s") -> float:
    return max(r[key] for r in repeats)


def report_ratios(report: dict) -> dict:
    """b/a and c/d from the best closed-loop run of each configuration (any batch size and wait),
    and the highest offered rate whose p99 stayed under 1 s in every repeat."""
    closed: dict[str, float] = {}
    for run in report["runs"]:
        if run["repeats"][0]["mode"] == "closed":
            closed[run["config"]] = max(closed.get(run["config"], 0.0), best(run["repeats"]))
    ratios = {}
    ceiling = report["ceiling"].get("per_s")
    if ceiling and "b" in closed:
        ratios["b/a"] = closed["b"] / max(ceiling)
    if "baseline" in report and "c" in closed:
        ratios["c/d"] = closed["c"] / best(report["baseline"]["repeats"])
    for label in ("b", "c", "s", "n"):
        until = "verdict_latency_ms" if label == "b" else "commit_latency_ms"
        open_runs = [r["repeats"] for r in report["runs"] if r["config"] == label
                     and r["repeats"][0]["mode"] == "open"]
        if open_runs:
            under = [reps[0]["offered_per_s"] for reps in open_runs
                     if max(x[until]["p99"] for x in reps) < 1_000]
            ratios[f"highest offered rate with p99 < 1 s ({label})"] = max(under) if under else None
    return ratios


def declare_traffic(args, config, traffic) -> None:
    """Declare the traffic's triangles in the service's database when it was given."""
    if not config.mongodb_uri:
        return
    from stepbatch.mesh.regions import IdRegion
    from stepbatch.store.mongo import MongoStore

    with MongoStore(config.mongodb_uri, config.db_name, config=config) as store:
        store.declare(IdRegion.of_ids(traffic.triangles))
