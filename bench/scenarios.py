"""The bench's scenarios: what `make bench` measures, each a method of `Bench`.

Item purchases spread over many tenants or all on one hot tenant, balance reads, currency
purchases through the card-processor simulator, hosted checkout (mint a session, pay it through
the page's API), webhook deliveries (a backlog drained, signatures
verified), and the raw-SQL baseline: the writes of one item purchase straight from asyncpg. Each
sets up its own tenants and players through the admin API, then runs through `runner.drive`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import pathlib
import secrets
import time
from typing import Any

import aiohttp
from aiohttp import web

from bench import runner as load
from bench.client import Connection
from bench.runner import Run, drive, pct_ms
from devstack.devservers import free_port
from services.common import db
from services.ledger import chart

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPREAD_TENANTS = 16
WEBHOOK_ENDPOINTS = 4
REQUEST_TIMEOUT_S = 30.0
FUNDING_UNITS = "1000000"
SESSION_READS_CONCURRENCY = 16  # the checkout scenario reads every paid session back, this many at once


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
        # Spread over every gateway replica, as a load balancer in front of them would.
        urls = (env.get("INVO_GATEWAY_URLS") or self.gateway).split(",")
        self.conns = [Connection(urls[i % len(urls)], timeout_s=REQUEST_TIMEOUT_S) for i in range(concurrency)]

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

    async def checkout_purchases(self) -> Run:
        """Hosted checkout without the browser: a session minted with the SDK key, then paid through
        the page's API with its token, as the page's script does. One operation is mint + pay (what
        a player's purchase costs the network); the two calls' own latencies go in the result too.
        Afterwards every paid session must read `completed` with the order and transaction pay gave."""
        big = "1000000.00"
        t = await self.tenant(spending_caps={"hourly_usd": big, "daily_usd": big, "monthly_usd": big})
        headers = {"X-Game-Secret-Key": t["sdk_key"]}
        paid: list[tuple[str, str, str]] = []  # (session_id, order_id, transaction_id)
        steps: list[tuple[float, float, float]] = []  # (started, mint_s, pay_s) of each paid operation

        async def request(w: int, i: int) -> bool:
            started = time.monotonic()
            body = {
                # A new player each time, as in currency-purchase: a real player makes at most 10 attempts a minute.
                "player_email": f"co{w}-{i}-{self.run_id}@bench.test",
                "usd_amount": "1.00",
                "success_url": "https://bench.example/ok",
                "cancel_url": "https://bench.example/cancel",
            }
            t0 = time.perf_counter()
            status, raw = await self.conns[w].request("POST", "/api/checkout/sessions", headers=headers, body=body)
            if status != 201:
                return False
            minted = json.loads(raw)
            token = minted["checkout_url"].partition("session=")[2]
            t1 = time.perf_counter()
            status, raw = await self.conns[w].request(
                "POST",
                "/checkout/api/pay",
                headers={"Authorization": f"Bearer {token}"},
                body={"payment_method_id": "pm_card_visa", "save_card": False},
            )
            t2 = time.perf_counter()
            answer = json.loads(raw) if status == 200 else {}
            if answer.get("status") != "success":  # "pending" or "requires_action" is not a purchase made
                return False
            paid.append((minted["session_id"], str(answer.get("order_id")), str(answer.get("transaction_id"))))
            steps.append((started, t1 - t0, t2 - t1))
            return True

        run = await drive("checkout", self.duration_s, self.concurrency, request, warmup_s=self.warmup_s)
        measured = [s for s in steps if s[0] >= run.started]
        run.extra |= {
            "mint_p50_ms": pct_ms([s[1] for s in measured], 0.50),
            "mint_p99_ms": pct_ms([s[1] for s in measured], 0.99),
            "pay_p50_ms": pct_ms([s[2] for s in measured], 0.50),
            "pay_p99_ms": pct_ms([s[2] for s in measured], 0.99),
            **await self._sessions_completed(headers, paid),
        }
        return run

    async def _sessions_completed(self, headers: dict[str, str], paid: list[tuple[str, str, str]]) -> dict[str, Any]:
        """Every paid session (warm-up included) reads completed, with the order and transaction
        its pay answered; the ones that do not are listed in the result and fail the run."""
        assert self.http is not None
        http = self.http
        gate = asyncio.Semaphore(SESSION_READS_CONCURRENCY)
        wrong: list[dict[str, Any]] = []

        async def one(sid: str, order_id: str, transaction_id: str) -> None:
            async with gate, http.get(f"{self.gateway}/api/checkout/sessions/{sid}", headers=headers) as resp:
                state = await resp.json()
            want = {"status": "completed", "order_id": order_id, "transaction_id": transaction_id}
            if resp.status != 200 or any(state.get(k) != v for k, v in want.items()):
                wrong.append({"session_id": sid, "http_status": resp.status, "expected": want, "read": state})

        await asyncio.gather(*(one(*p) for p in paid))
        return {"sessions_checked": len(paid), "sessions_not_completed": len(wrong), "sessions_wrong": wrong[:20]}

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
            if load.OBSERVER is not None:  # the drain is what is measured: observe it
                await load.OBSERVER.begin()
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
            if load.OBSERVER is not None:
                run.extra["database"] = await load.OBSERVER.end()
            run.extra |= {
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
        """`naive-per-request-sql` (once `raw-sql-baseline`): the writes of one item purchase, one
        transaction per purchase, from asyncpg, every one locking the single `network:fees` row, so
        that they queue on it: what a ledger without batching would do, not what PostgreSQL can."""
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

            return await drive(
                "naive-per-request-sql", self.duration_s, self.concurrency, request, warmup_s=self.warmup_s
            )
        finally:
            await pool.close()
            await db.drop_schema(url, schema)

    async def ledger_check(self) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.get(self.gateway + "/admin/ledger/check", headers=self.admin) as resp:
            return dict(await resp.json())
