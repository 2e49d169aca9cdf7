"""The serving benchmark's comparison with the serving frameworks (peers): table and goals.

"Best peer" at a user count is the peer with the most req/s there; its p95 is the bar for
nlpserve's. CPU per request = server CPU seconds / requests (every process of the server: a
peer's workers, Ray's raylet and proxy included).
"""

from __future__ import annotations

from loadtests.bench_report import BenchResult, Point, ServerRun

PEER_SPEEDUP_GOAL = 1.5  # nlpserve req/s >= this x the best peer's, at every user count
HIGH_LOAD_KEEP_GOAL = 0.95  # req/s at the highest user count >= this x req/s at GOAL_HIGH_FROM
GOAL_HIGH_FROM = 32


def served_run(result: BenchResult) -> ServerRun | None:
    """The (a) run of the served version with the model's own batching config."""
    return next((r for r in result.runs if r.kind == "batching" and not r.variant), None)


def _cpu_ms_per_request(p: Point) -> str:
    return f"{1000 * p.server_cpu_cores / p.stats.rps:.1f}" if p.stats.rps else "n/a"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def best_peer(result: BenchResult, users: int) -> tuple[ServerRun, Point] | None:
    peers = [(r, p) for r in result.runs if r.kind == "peer" and (p := r.at(users))]
    return max(peers, key=lambda rp: rp[1].stats.rps, default=None)


def peer_table(result: BenchResult) -> list[str]:
    """Per user count: nlpserve (a) and every peer, with the ratios nlpserve / peer."""
    a = served_run(result)
    peers = [r for r in result.runs if r.kind == "peer"]
    if a is None or not peers:
        return []
    lines = [
        "## nlpserve vs. the serving frameworks",
        "",
        f"nlpserve = {a.label}; ratios are nlpserve / peer (req/s: higher is better for "
        "nlpserve; p95: above 1 means nlpserve's p95 is lower). CPU ms/req = server CPU "
        "seconds per request, every process of the server counted.",
        "",
        "| users | server | req/s | p50 ms | p95 ms | p99 ms | errors | CPU ms/req "
        "| req/s ratio | p95 ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pa in a.points:
        rows = [(a, pa)] + [(r, p) for r in peers if (p := r.at(pa.users))]
        for run, p in rows:
            s = p.stats
            ratio = p95 = ""
            if run is not a:
                ratio = f"{pa.stats.rps / s.rps:.2f}x" if s.rps else "n/a"
                p95 = (
                    f"{s.p95_ms / pa.stats.p95_ms:.2f}x" if s.p95_ms and pa.stats.p95_ms else "n/a"
                )
            lines.append(
                f"| {pa.users} | {run.label} | {s.rps:.1f} | {_ms(s.p50_ms)} | {_ms(s.p95_ms)} "
                f"| {_ms(s.p99_ms)} | {p.errors} | {_cpu_ms_per_request(p)} | {ratio} | {p95} |"
            )
    return [*lines, ""]


def peer_goals(result: BenchResult) -> list[tuple[str, str, bool | None]]:
    """The goals against the peers (req/s and p95 at every user count, throughput kept from 32
    to the highest user count), and agreement of every server's labels with (a)."""
    rows: list[tuple[str, str, bool | None]] = []
    a = served_run(result)
    if a is None:
        return rows
    for pa in a.points:
        best = best_peer(result, pa.users)
        if best is None:
            continue
        run, p = best
        ratio = pa.stats.rps / p.stats.rps if p.stats.rps else float("inf")
        p95_ok = (pa.stats.p95_ms or 0) <= (p.stats.p95_ms or 0)
        rows.append(
            (
                f"(a) >= {PEER_SPEEDUP_GOAL}x the best peer's req/s at {pa.users} users, p95 <= "
                "its p95",
                f"{ratio:.2f}x {run.label}; p95 {_ms(pa.stats.p95_ms)} vs {_ms(p.stats.p95_ms)} ms",
                ratio >= PEER_SPEEDUP_GOAL and p95_ok,
            )
        )
    high, top = a.at(GOAL_HIGH_FROM), max(a.points, key=lambda p: p.users, default=None)
    if high and top and top.users > GOAL_HIGH_FROM and high.stats.rps:
        keep = top.stats.rps / high.stats.rps
        rows.append(
            (
                f"(a) req/s at {top.users} users >= {HIGH_LOAD_KEEP_GOAL:.0%} of that at "
                f"{GOAL_HIGH_FROM}",
                f"{keep:.0%} ({top.stats.rps:.1f} vs {high.stats.rps:.1f})",
                keep >= HIGH_LOAD_KEEP_GOAL,
            )
        )
    for run in result.runs:
        if run.label_agreement is not None and run is not a:
            rows.append(
                (
                    f"{run.label}: same labels as (a) on the probe texts (>= 99%)",
                    f"{run.label_agreement:.1%} of {len(run.labels)}",
                    run.label_agreement >= 0.99,
                )
            )
    return rows
