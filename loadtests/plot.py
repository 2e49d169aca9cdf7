"""Plot throughput and p50/p95/p99 latency against concurrent users, one line per server."""

from __future__ import annotations

from pathlib import Path

from loadtests.stats import EndpointStats

# (users, aggregate stats of the run at that many users), sorted by users
Curve = list[tuple[int, EndpointStats]]


def plot_load_curves(series: dict[str, Curve], png: Path, title: str = "") -> Path:
    """Two panels: requests/s vs users, and p50 (dotted) / p95 (solid) / p99 (dashed) latency vs
    users; one colour per server."""
    # Imported here: only a report plots, matplotlib takes ~0.8 s to load, and the backend is
    # chosen before pyplot loads without changing it for whoever imports this module.
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter, NullLocator, ScalarFormatter

    fig, (ax_rps, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"p50_ms": ":", "p95_ms": "-", "p99_ms": "--"}
    for i, (label, curve) in enumerate(series.items()):
        color = f"C{i}"  # one colour per server in both panels; the left legend names them
        ax_rps.plot(
            [u for u, _ in curve], [s.rps for _, s in curve], "o-", color=color, label=label
        )
        for attr, style in styles.items():
            points = [(u, getattr(s, attr)) for u, s in curve if getattr(s, attr) is not None]
            if points:
                xs, ys = [u for u, _ in points], [v for _, v in points]
                ax_lat.plot(xs, ys, "o" + style, color=color, markersize=3)
    # The line style says the percentile; proxies keep that legend short with many servers.
    proxies = [Line2D([], [], color="black", linestyle=st) for st in (":", "-", "--")]
    ax_lat.legend(proxies, [attr[:3] for attr in styles], fontsize=7)
    ax_rps.set(xlabel="concurrent users", ylabel="requests / s", title="throughput")
    ax_lat.set(xlabel="concurrent users", ylabel="latency (ms)", title="latency percentiles")
    ax_rps.set_ylim(bottom=0)
    ax_lat.set_yscale("log")  # p99 at 64 users can be 100x p50 at 1 user
    ax_lat.yaxis.set_major_formatter(ScalarFormatter())
    ax_lat.yaxis.set_minor_formatter(NullFormatter())
    all_users = sorted({u for curve in series.values() for u, _ in curve})
    for ax in (ax_rps, ax_lat):
        if len(all_users) > 1:
            ax.set_xscale("log", base=2)  # users grow geometrically (1, 8, 32, 64)
        ax.set_xticks(all_users, [str(u) for u in all_users])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="both", alpha=0.3)
    ax_rps.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
