"""`make bench`: the network end to end, against the physical limit of this machine.

Starts the stack the way `make run` does (or uses `.invo/dev.env` if `make up` is running), sets up
tenants and players, runs each scenario for a fixed duration at a fixed concurrency through the
public HTTP gateway, then prints a table and writes `bench/results/<timestamp>.json` and `.png`.
The raw-SQL baseline issues the same database writes as one item purchase straight from asyncpg:
what this machine can do for this work without HTTP, gRPC or batching.

    python -m bench [--duration S] [--warmup S] [--concurrency N] [--scenario NAME ...] [--quick] [--env-file F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import pathlib
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from bench.client import Connection
from services.common import db
from services.common.devservers import free_port
from services.common.stack import Stack, default_home
from services.ledger import chart

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCENARIOS = (
    "item-purchase-spread",
    "item-purchase-hot-tenant",
    "balance-read",
    "currency-purchase",
    "webhook-delivery",
    "raw-sql-baseline",
)
SPREAD_TENANTS = 16
WEBHOOK_ENDPOINTS = 4
REQUEST_TIMEOUT_S = 30.0
FUNDING_UNITS = "1000000"
TARGETS = {
    "purchase_ratio_min": 0.5,
    "purchase_ratio_defect_below": 0.3,
    "purchase_p99_ms_max": 50.0,
    "hot_vs_spread_min": 0.8,
    "balance_read_rps_min": 3000.0,
    "webhook_deliveries_per_s_min": 1000.0,
}


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

    bar_task = asyncio.ensure_future(progress())
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    run.elapsed_s = time.monotonic() - max(measured_from, start)
    run.started = measured_from
    await bar_task
    return run


class Bench:
    def __init__(self, env: dict[str, str], *, duration_s: float, concurrency: int, warmup_s: float = 0.0) -> None:
        self.env = env
        self.gateway = env["INVO_GATEWAY_URL"]
        self.admin = {"Authorization": f"Bearer {env['INVO_ADMIN_TOKEN']}"}
        self.duration_s = duration_s
        self.warmup_s = warmup_s
        self.concurrency = concurrency
        self.run_id = secrets.token_hex(4)
        self.http: aiohttp.ClientSession | None = None
        # One keep-alive connection per simulated client, for the measured requests.
        self.conns = [Connection(self.gateway, timeout_s=REQUEST_TIMEOUT_S) for _ in range(concurrency)]

    async def __aenter__(self) -> Bench:
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=self.concurrency * 2 + 16),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()
        for conn in self.conns:
            conn.close()

    async def _post(self, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        assert self.http is not None
        async with self.http.post(self.gateway + path, json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def tenant(self, **settings: Any) -> dict[str, Any]:
        body = {"name": f"bench {self.run_id}", "currency_name": "Bench Coins", "rate_limit_per_second": 100000}
        status, out = await self._post("/admin/tenants", {**body, **settings}, self.admin)
        if status != 201:
            raise RuntimeError(f"could not create a tenant: {status} {out}")
        return dict(out)

    async def fund(self, tenant_id: str, emails: list[str]) -> None:
        async def one(email: str) -> None:
            status, out = await self._post(
                "/admin/players/credit",
                {
                    "tenant_id": tenant_id,
                    "player_email": email,
                    "amount": FUNDING_UNITS,
                    "reason": "benchmark",
                    "idempotency_key": f"bench-fund-{tenant_id}-{email}",
                },
                self.admin,
            )
            if status != 200:
                raise RuntimeError(f"could not fund {email}: {status} {out}")

        for i in range(0, len(emails), 50):
            await asyncio.gather(*(one(e) for e in emails[i : i + 50]))

    # -- scenarios ------------------------------------------------------------------------

    async def item_purchases(self, name: str, *, hot: bool) -> Run:
        tenants = [await self.tenant() for _ in range(1 if hot else SPREAD_TENANTS)]
        players = [f"w{w}-{self.run_id}@bench.test" for w in range(self.concurrency)]
        by_tenant: dict[str, list[str]] = {}
        for w, email in enumerate(players):
            by_tenant.setdefault(tenants[w % len(tenants)]["tenant_id"], []).append(email)
        for tenant_id, emails in by_tenant.items():
            await self.fund(tenant_id, emails)

        async def request(w: int, i: int) -> bool:
            return await self._purchase(
                w, tenants[w % len(tenants)]["sdk_key"], players[w], f"{name}-{self.run_id}-{w}-{i}"
            )

        return await drive(name, self.duration_s, self.concurrency, request, warmup_s=self.warmup_s)

    async def _purchase(self, w: int, sdk_key: str, email: str, idempotency_key: str) -> bool:
        """One item purchase of 0.01 unit through the gateway by client `w`; True when it succeeded."""
        body = {
            "player_email": email,
            "item_id": "bench_item",
            "item_name": "Bench Item",
            "price": "0.01",
            "idempotency_key": idempotency_key,
        }
        status, _ = await self.conns[w].request(
            "POST", "/api/item-purchases/purchase-item", headers={"X-Game-Secret-Key": sdk_key}, body=body
        )
        return status == 200

    async def balance_reads(self) -> Run:
        t = await self.tenant()
        players = [f"r{w}-{self.run_id}@bench.test" for w in range(self.concurrency)]
        await self.fund(t["tenant_id"], players)
        headers = {"X-Game-Secret-Key": t["sdk_key"]}

        async def request(w: int, i: int) -> bool:
            status, _ = await self.conns[w].request(
                "GET", "/api/players/balance", headers=headers, params={"player_email": players[w]}
            )
            return status == 200

        return await drive("balance-read", self.duration_s, self.concurrency, request, warmup_s=self.warmup_s)

    async def currency_purchases(self) -> Run:
        big = "1000000.00"
        t = await self.tenant(spending_caps={"hourly_usd": big, "daily_usd": big, "monthly_usd": big})
        headers = {"X-Game-Secret-Key": t["sdk_key"]}

        async def request(w: int, i: int) -> bool:
            # A new player each time: a real player makes at most 10 attempts a minute.
            body = {
                "player_email": f"cp{w}-{i}-{self.run_id}@bench.test",
                "usd_amount": "1.00",
                "payment_method_id": "pm_card_visa",
                "purchase_reference": f"cp-{self.run_id}-{w}-{i}",
            }
            status, _ = await self.conns[w].request(
                "POST", "/api/currency-purchases/purchase-currency", headers=headers, body=body
            )
            return status == 200

        return await drive("currency-purchase", self.duration_s, self.concurrency, request, warmup_s=self.warmup_s)

    async def webhook_deliveries(self) -> Run:
        """Events pile up while the receiver holds its first requests; then the gate opens and
        the rate at which the backlog drains is the delivery rate (signatures verified)."""
        port = free_port()
        gate = asyncio.Event()
        drained = asyncio.Event()
        want = {"events": 1 << 62}
        received: dict[str, float] = {}
        bad = {"signatures": 0}
        secrets_by_path: dict[str, str] = {}

        async def receive(request: web.Request) -> web.Response:
            await gate.wait()
            body = await request.read()
            header = request.headers.get("X-Invo-Signature", "")
            parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
            secret = secrets_by_path[request.match_info["k"]]
            expected = hmac.new(secret.encode(), parts.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, parts.get("v1", "")):
                bad["signatures"] += 1
            received.setdefault(request.headers.get("X-Invo-Event-Id", ""), time.monotonic())
            if len(received) >= want["events"]:
                drained.set()
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook/{k}", receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            tenants = []
            for k in range(WEBHOOK_ENDPOINTS):
                t = await self.tenant(webhook_url=f"http://127.0.0.1:{port}/hook/{k}")
                secrets_by_path[str(k)] = t["webhook_signing_secret"]
                tenants.append(t)
            players = [f"h{w}-{self.run_id}@bench.test" for w in range(self.concurrency)]
            for k, t in enumerate(tenants):
                await self.fund(t["tenant_id"], players[k::WEBHOOK_ENDPOINTS])
            received.clear()
            # Held requests must not time out (10 s per attempt): make the backlog quickly.
            produce_s = min(self.duration_s, 6.0)

            async def request(w: int, i: int) -> bool:
                t = tenants[w % WEBHOOK_ENDPOINTS]
                return await self._purchase(w, t["sdk_key"], players[w], f"wh-{self.run_id}-{w}-{i}")

            produced = await drive("webhook-delivery (events)", produce_s, self.concurrency, request)
            expected = len(produced.latencies_s) - produced.errors
            await asyncio.sleep(1.0)  # let the relay and the consumer record the backlog
            opened = time.monotonic()
            want["events"] = expected
            if len(received) >= expected:
                drained.set()
            gate.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), timeout=120)
            last = max(received.values()) if received else opened
            run = Run()
            run.elapsed_s = max(1e-6, last - opened)
            run.latencies_s = [v - opened for v in received.values()]
            run.errors = max(0, expected - len(received)) + bad["signatures"]
            run.extra = {
                "deliveries": len(received),
                "events": expected,
                "bad_signatures": bad["signatures"],
                "note": "latency = time from the gate opening to each delivery (backlog drain)",
            }
            return run
        finally:
            gate.set()
            await runner.cleanup()

    async def raw_sql_baseline(self) -> Run:
        """The writes of one item purchase, one transaction per purchase, from asyncpg: the same
        tables (the ledger's own migrations in a scratch schema), rows locked in id order."""
        schema = f"bench_raw_{self.run_id}"
        url = self.env["INVO_DATABASE_URL"]
        migrations = db.service_migrations("ledger", ROOT / "services" / "ledger" / "migrations", outbox=True)
        await db.migrate_url(url, schema, migrations)
        pool = await db.create_pool(
            url, schema, application_name="bench", max_size=self.concurrency, statement_timeout_ms=30000
        )
        try:
            tenants = [f"tn_BENCH{t:020d}" for t in range(SPREAD_TENANTS)]
            codes = [chart.player(tenants[w % SPREAD_TENANTS], f"w{w}@bench.test") for w in range(self.concurrency)]
            async with pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO accounts (code, kind, constrained, credits_posted)"
                    " SELECT c, 'player', true, 100000000 FROM unnest($1::text[]) c",
                    codes,
                )
                await conn.execute(
                    "INSERT INTO accounts (code, kind, constrained)"
                    " SELECT c, 'revenue', true FROM unnest($1::text[]) c",
                    [chart.revenue(t) for t in tenants],
                )
                await conn.execute(
                    "INSERT INTO accounts (code, kind, constrained) VALUES ($1, 'network', true)", chart.NETWORK_FEES
                )
                rows = await conn.fetch("SELECT id, code FROM accounts")
            account_id = {r["code"]: r["id"] for r in rows}

            async def request(w: int, i: int) -> bool:
                tenant = tenants[w % SPREAD_TENANTS]
                player = account_id[codes[w]]
                revenue = account_id[chart.revenue(tenant)]
                network = account_id[chart.NETWORK_FEES]
                txn = f"txn_raw{self.run_id}{w:04d}{i:010d}"
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(
                        "INSERT INTO idempotency (scope, key, request_hash, txn_id, result)"
                        " VALUES ($1, $2, $3, $4, '{}')",
                        tenant,
                        f"{w}-{i}",
                        b"h",
                        txn,
                    )
                    locked = await conn.fetch(
                        "SELECT id, credits_posted - debits_posted AS balance FROM accounts"
                        " WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
                        [player, revenue, network],
                    )
                    if next(r["balance"] for r in locked if r["id"] == player) < 1:
                        return False
                    await conn.execute(
                        "UPDATE accounts SET debits_posted = debits_posted + (CASE WHEN id = $1 THEN 1 ELSE 0 END),"
                        " credits_posted = credits_posted + (CASE WHEN id = $1 THEN 0 ELSE 1 END)"
                        " WHERE id = ANY($2::bigint[])",
                        player,
                        [player, revenue, network],
                    )
                    await conn.execute(
                        "INSERT INTO transactions (id, tenant_id, kind, status, postings, created_at)"
                        " VALUES ($1, $2, 'item_purchase', 'posted', '[]', now())",
                        txn,
                        tenant,
                    )
                    await conn.execute(
                        "INSERT INTO entries (txn_id, tenant_id, account_id, amount, balance_after, created_at)"
                        " SELECT $1, $2, a, m, 0, now() FROM unnest($3::bigint[], $4::bigint[]) AS u(a, m)",
                        txn,
                        tenant,
                        [player, revenue, network],
                        [-2, 1, 1],
                    )
                    await conn.execute(
                        "INSERT INTO outbox (event_id, tenant_id, event_type, body)"
                        " VALUES ($1, $2, 'item.purchased', '{}')",
                        "evt_" + txn,
                        tenant,
                    )
                return True

            return await drive("raw-sql-baseline", self.duration_s, self.concurrency, request, warmup_s=self.warmup_s)
        finally:
            await pool.close()
            await db.drop_schema(url, schema)

    async def ledger_check(self) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.get(self.gateway + "/admin/ledger/check", headers=self.admin) as resp:
            return dict(await resp.json())


def _table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'scenario':<26} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7} {'requests':>9}"]
    for name, r in results.items():
        lines.append(
            f"{name:<26} {r['rps']:>9.1f} {r['p50_ms'] or 0:>8.2f} {r['p95_ms'] or 0:>8.2f} {r['p99_ms'] or 0:>8.2f}"
            f" {r['errors']:>7} {r['requests']:>9}"
        )
    return "\n".join(lines)


def _chart(results: dict[str, dict[str, Any]], path: pathlib.Path, title: str) -> None:
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


def _env_from_file(path: pathlib.Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key.strip()] = value.strip()
    return env


async def run(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    async with Bench(env, duration_s=args.duration, concurrency=args.concurrency, warmup_s=args.warmup) as b:
        for name in args.scenario:
            if name == "item-purchase-spread":
                r = await b.item_purchases(name, hot=False)
            elif name == "item-purchase-hot-tenant":
                r = await b.item_purchases(name, hot=True)
            elif name == "balance-read":
                r = await b.balance_reads()
            elif name == "currency-purchase":
                r = await b.currency_purchases()
            elif name == "webhook-delivery":
                r = await b.webhook_deliveries()
            else:
                r = await b.raw_sql_baseline()
            results[name] = r.summary(args.concurrency)
        check = await b.ledger_check()
    ratios: dict[str, float | None] = {}
    base = results.get("raw-sql-baseline", {}).get("rps")
    for name in ("item-purchase-spread", "item-purchase-hot-tenant"):
        if name in results and base:
            ratios[f"{name}/raw-sql-baseline"] = round(results[name]["rps"] / base, 3)
    if (
        "item-purchase-spread" in results
        and "item-purchase-hot-tenant" in results
        and results["item-purchase-spread"]["rps"]
    ):
        ratios["hot/spread"] = round(
            results["item-purchase-hot-tenant"]["rps"] / results["item-purchase-spread"]["rps"], 3
        )
    return {
        "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "options": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "quick": args.quick,
        },
        "scenarios": results,
        "ratios": ratios,
        "targets": TARGETS,
        "ledger_check": {"ok": check.get("ok"), "total_balance": check.get("total_balance"), "detail": check},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario (default 10)")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds per scenario before measuring starts (default 1)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only these (repeatable)")
    parser.add_argument("--quick", action="store_true", help="2 s per scenario: a smoke run")
    parser.add_argument("--env-file", type=pathlib.Path, help="use a running network described by this dev.env")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="where results go")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 2.0)
        args.warmup = min(args.warmup, 0.5)
    args.scenario = args.scenario or list(SCENARIOS)
    if not 1 <= args.concurrency <= 512 or not 0.5 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("concurrency 1..512, duration 0.5..600 s and warmup 0..60 s")

    stack: Stack | None = None
    env_file = args.env_file or (default_home() / "dev.env")
    if env_file.exists():
        env = _env_from_file(env_file)
        print(f"using the running network of {env_file}", file=sys.stderr)
    else:
        print("starting the network (PostgreSQL with fsync, NATS, every service)...", file=sys.stderr)
        home = pathlib.Path(tempfile.mkdtemp(prefix="invo-bench-"))
        stack = Stack(
            home,
            env={k: v for k, v in os.environ.items() if k != "INVO_GATEWAY_PORT"}
            | {"INVO_LOG_LEVEL": "WARNING", "INVO_GATEWAY_PORT": str(free_port())},
        )
        stack.start()
        env = stack.dev_env()
    try:
        result = asyncio.run(run(args, env))
    finally:
        if stack is not None:
            stack.stop()
            shutil.rmtree(home, ignore_errors=True)  # its databases: hundreds of MB a run
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = result["timestamp"].replace(":", "").replace("-", "")
    json_path = args.out / f"{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2))
    with contextlib.suppress(ImportError):
        _chart(result["scenarios"], args.out / f"{stamp}.png", f"INVO bench {result['timestamp']} c={args.concurrency}")
    print()
    print(_table(result["scenarios"]))
    for name, value in result["ratios"].items():
        print(f"{name:<45} {value}")
    print(f"ledger check: ok={result['ledger_check']['ok']} total_balance={result['ledger_check']['total_balance']}")
    print(f"results: {json_path}")
    return 0 if result["ledger_check"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
