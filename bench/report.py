"""The bench's report: the results table it prints and the chart it writes next to the JSON."""

from __future__ import annotations

import pathlib
from typing import Any


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'scenario':<26} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7} {'requests':>9}"]
    for name, r in results.items():
        lines.append(
            f"{name:<26} {r['rps']:>9.1f} {r['p50_ms'] or 0:>8.2f} {r['p95_ms'] or 0:>8.2f} {r['p99_ms'] or 0:>8.2f}"
            f" {r['errors']:>7} {r['requests']:>9}"
        )
    return "\n".join(lines)


def database_table(results: dict[str, dict[str, Any]]) -> str:
    """What each scenario's measured window cost the database and the machine (bench.observe)."""
    lines = [
        f"{'scenario':<26} {'ledger tx/s':>11} {'entries/s':>10} {'commits/s':>10} {'WAL MB/s':>9} {'fsyncs/s':>9}"
        f" {'cores: pg':>9} {'ledger':>7} {'gateway':>8} {'others':>7} {'bench':>6} {'busy':>5}"
    ]
    for name, r in results.items():
        d = r.get("database")
        if not d:
            continue
        c = d["cpu_cores"]
        lines.append(
            f"{name:<26} {d['ledger_transactions_per_s']:>11.1f} {d['ledger_entries_per_s']:>10.1f}"
            f" {d['db_commits_per_s']:>10.1f} {d['wal_mb_per_s']:>9.2f} {d['wal_fsyncs_per_s']:>9.1f}"
            f" {c['postgres']:>9.2f} {c['ledger']:>7.2f} {c['gateway']:>8.2f} {c['services'] + c['nats']:>7.2f}"
            f" {c['bench']:>6.2f} {d['machine_busy'] or 0:>5.0%}"
        )
    return "\n".join(lines)


def process_lines(results: dict[str, dict[str, Any]], at_least: float = 0.05) -> str:
    """Each scenario's busiest processes by module (cores), the ones using at least `at_least`."""
    lines = []
    for name, r in results.items():
        by = (r.get("database") or {}).get("cpu_by_process") or {}
        busy = sorted(((v, k) for k, v in by.items() if v >= at_least), reverse=True)
        if busy:
            lines.append(f"{name:<26} " + ", ".join(f"{k.split('.')[-1]} {v:.2f}" for v, k in busy))
    return "\n".join(lines)


def chart(results: dict[str, dict[str, Any]], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    ax1.barh(names, [results[n]["rps"] for n in names], color="#4c72b0")
    ax1.set_xlabel("requests per second (deliveries for webhook-delivery)")
    ax1.invert_yaxis()
    # Request latencies only: the webhook scenario's "latency" is a backlog's drain time.
    names = [n for n in names if "note" not in results[n]]
    width = 0.27
    for k, (key, color) in enumerate((("p50_ms", "#55a868"), ("p95_ms", "#dd8452"), ("p99_ms", "#c44e52"))):
        ax2.barh(
            [i + (k - 1) * width for i in range(len(names))],
            [results[n][key] or 0 for n in names],
            height=width,
            color=color,
            label=key.replace("_ms", ""),
        )
    ax2.set_yticks(range(len(names)), names)
    ax2.invert_yaxis()
    ax2.set_xlabel("request latency (ms)")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
