"""The bench's load driver: `drive` runs one scenario's requests, `Run` keeps and sums them up.

`concurrency` workers issue requests back to back for a warm-up and then a measured duration,
with a progress bar on stderr; `Run.summary` gives requests, errors, req/s and p50/p95/p99/mean.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg

from bench.observe import Observer

# Set by `make bench` (bench.__main__): each measured window is also observed from the database's
# and the machine's side (bench.observe), into the scenario's `database` field.
OBSERVER: Observer | None = None


class Run:
    """Latencies and errors of one scenario."""

    def __init__(self) -> None:
        self.latencies_s: list[float] = []
        self.errors = 0
        self.started = 0.0
        self.elapsed_s = 0.0
        self.extra: dict[str, Any] = {}

    def summary(self, concurrency: int) -> dict[str, Any]:
        lat = sorted(self.latencies_s)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(len(lat) * p))] * 1000, 2)

        ok = len(lat) - self.errors
        return {
            "requests": len(lat),
            "errors": self.errors,
            "duration_s": round(self.elapsed_s, 2),
            "concurrency": concurrency,
            "rps": round(ok / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "p50_ms": pct(0.50),
            "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
            **self.extra,
        }


async def drive(
    name: str,
    duration_s: float,
    concurrency: int,
    request: Callable[[int, int], Awaitable[bool]],
    *,
    warmup_s: float = 0.0,
) -> Run:
    """`concurrency` workers each issue requests back to back for `warmup_s` + `duration_s`; only
    requests started after the warm-up are measured (the first ones open connections and fill
    caches: new players, new keys)."""
    from tqdm import tqdm

    run = Run()
    start = time.monotonic()
    measured_from = start + warmup_s
    deadline = measured_from + duration_s

    async def worker(w: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            measured = time.monotonic() >= measured_from
            t0 = time.perf_counter()
            try:
                ok = await request(w, i)
            except (aiohttp.ClientError, TimeoutError, asyncpg.PostgresError, OSError):
                ok = False
            if measured:
                run.latencies_s.append(time.perf_counter() - t0)
                run.errors += 0 if ok else 1
            i += 1

    total_s = warmup_s + duration_s

    async def progress() -> None:
        with tqdm(
            total=round(total_s, 1), desc=f"{name:<26}", unit="s", leave=True, file=sys.stderr, disable=None
        ) as bar:
            while (now := time.monotonic()) < deadline:
                await asyncio.sleep(0.25)
                bar.n = round(min(total_s, now - start), 1)
                bar.set_postfix(req=len(run.latencies_s), err=run.errors)
            bar.n = round(total_s, 1)
            bar.refresh()

    async def observe() -> None:
        if OBSERVER is not None:
            await asyncio.sleep(max(0.0, measured_from - time.monotonic()))
            await OBSERVER.begin()

    bar_task = asyncio.ensure_future(progress())
    observe_task = asyncio.ensure_future(observe())
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    run.elapsed_s = time.monotonic() - max(measured_from, start)
    run.started = measured_from
    await bar_task
    await observe_task
    if OBSERVER is not None:
        run.extra["database"] = await OBSERVER.end()
    return run


def pct_ms(values_s: list[float], p: float) -> float | None:
    """The p-quantile in milliseconds, as `Run.summary` computes it."""
    if not values_s:
        return None
    ordered = sorted(values_s)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000, 2)
