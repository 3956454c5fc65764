"""The `transfer` scenario: one whole self-transfer through the gateway per operation.

An operation is what a player's transfer costs the network: initiate-transfer with the source
tenant's SDK key, the PIN read from the development SMS outbox (`GET /admin/dev/sms`, admin token:
the player reading their phone), verify-sms, then claim-transfer by the destination tenant for a
new player of its own. req/s is completed transfers a second; p50/p99 are of the whole operation,
and the result file has each step's own p50/p99 too.

Texts are limited (10 per phone number and 1000 per tenant an hour; a self-transfer reserves 2):
every operation has a phone number of its own, and the load is spread over source tenants that
each start no more transfers than their texts allow. SDK keys are limited too: the gateway caches
a resolved key for 5 s (INVO_AUTH_CACHE_TTL_S) and lets one address have only 20 key lookups
(AUTH_FAILURES_BURST) going at once; a client per tenant pair (64 keys at 32 clients) met 429
RATE_LIMITED "Too many failed authentications from this address" whenever the keys fell out of
the cache together. So, as item-purchase-spread does with its 16 tenants, at most 8 source and 8
destination tenants are in use at a time: client w sends from slot w % 8 (a chain of source
tenants, each with a funded player per client of the slot) to destination w % 8. The chains are
as long as the most this machine could do in the run needs (`TRANSFERS_PER_S_MAX`); a slot that
spends its chain anyway gets a new tenant there and then (that operation's latency includes it;
the result counts them).

Afterwards every completed transfer (warm-up included) must read `completed` with its amount
through `GET /api/transfers/{id}`, each destination player must hold exactly the amount claimed,
and each source player exactly its funding less amount + 10% for every transfer it initiated.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import re
import secrets
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from bench.client import Connection
from bench.runner import Run, drive, pct_ms
from bench.scenarios import FUNDING_UNITS, Bench

NAME = "transfer"
AMOUNT = "1"  # units each transfer moves; the sender pays 1.10
FEE_RATE = Decimal("0.1")
TEXTS_PER_TRANSFER = 2  # a self-transfer reserves the PIN's text and the claim code's
SMS_PER_TENANT_PER_HOUR = 1000  # the service's default (INVO_SMS_PER_TENANT_PER_HOUR)
TRANSFERS_PER_S_MAX = 200.0  # four calls and a dozen writes each: above what this network does on one box
TENANT_SLOTS = 8  # source tenants in use at a time, and destination tenants: 16 SDK keys in all
SETUP_CONCURRENCY = 8
READS_CONCURRENCY = 16
PIN_WAIT_S = 10.0  # the PIN is texted before initiate answers; the wait covers a provider retry
PIN_RE = re.compile(r"^(\d{6}) is your INVO transfer PIN")
# US area codes libphonenumber knows; the exchange is never N11 (a service code).
AREAS = ("415", "212", "312", "617", "206", "303", "512", "404")
EXCHANGES = tuple(n for n in range(200, 1000) if n % 100 != 11)
LINES = 10000


class Phones:
    """Phone numbers never given twice in a run, from a random start so that runs within the
    hour (the limits' window) do not meet either."""

    def __init__(self) -> None:
        self.space = len(AREAS) * len(EXCHANGES) * LINES
        self.next = secrets.randbelow(self.space)

    def take(self) -> str:
        n, self.next = self.next, (self.next + 1) % self.space
        line, n = n % LINES, n // LINES
        exchange, area = EXCHANGES[n % len(EXCHANGES)], AREAS[n // len(EXCHANGES)]
        return f"+1{area}{exchange}{line:04d}"


@dataclasses.dataclass
class Wallet:
    """One client's funded player in one source tenant."""

    tenant: dict[str, Any]
    player: str
    initiated: int = 0  # initiate answered 201
    uncertain: bool = False  # an initiate without an answer: its balance cannot be predicted


@dataclasses.dataclass
class Source:
    tenant: dict[str, Any]
    left: int  # transfers its hourly texts still allow
    wallets: dict[int, Wallet]  # by client
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # created and funded


@dataclasses.dataclass
class Slot:
    destination: dict[str, Any]
    clients: list[int]
    chain: list[Source]
    current: int = 0


@dataclasses.dataclass(frozen=True)
class Completed:
    transfer_id: str
    source_key: str
    destination_key: str
    destination_player: str
    amount: str


class TransferScenario:
    def __init__(self, b: Bench) -> None:
        self.b = b
        limit = int(b.env.get("INVO_SMS_PER_TENANT_PER_HOUR", SMS_PER_TENANT_PER_HOUR))
        self.per_source = limit // TEXTS_PER_TRANSFER
        self.phones = Phones()
        self.slots: list[Slot] = []
        self.added_sources = 0
        self.completed: list[Completed] = []
        self.steps: list[tuple[float, float, float, float, float]] = []  # started, initiate, pin, verify, claim
        self.failures: collections.Counter[str] = collections.Counter()  # "step status code": how many
        self.failure_messages: dict[str, str] = {}  # the first message of each

    # -- set-up ---------------------------------------------------------------------------

    async def _source(self, clients: list[int]) -> Source:
        """A new source tenant with a funded player for each of `clients`."""
        tenant = await self.b.tenant()
        wallets = {w: Wallet(tenant, f"ts{w}-{tenant['tenant_id'][-10:]}-{self.b.run_id}@bench.test") for w in clients}
        await self.b.fund(tenant["tenant_id"], [wallet.player for wallet in wallets.values()])
        source = Source(tenant, self.per_source, wallets)
        source.ready.set()
        return source

    async def _slot(self, k: int, slots: int) -> Slot:
        clients = list(range(k, self.b.concurrency, slots))
        most = math.ceil((self.b.warmup_s + self.b.duration_s) * TRANSFERS_PER_S_MAX / slots)
        chain = [await self._source(clients) for _ in range(max(1, math.ceil(most / self.per_source)))]
        return Slot(await self.b.tenant(), clients, chain)

    async def setup(self) -> None:
        slots = min(TENANT_SLOTS, self.b.concurrency)
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def one(k: int) -> Slot:
            async with gate:
                return await self._slot(k, slots)

        self.slots = list(await asyncio.gather(*(one(k) for k in range(slots))))

    # -- one operation ----------------------------------------------------------------------

    def _fail(self, step: str, status: int, raw: bytes) -> bool:
        try:
            answer = json.loads(raw)
            code, message = answer.get("error_code") or answer.get("status", ""), answer.get("message", "")
        except (ValueError, AttributeError):
            code, message = "", raw[:200].decode("utf-8", "replace")
        what = f"{step} {status} {code}".strip()
        self.failures[what] += 1
        self.failure_messages.setdefault(what, str(message)[:300])
        return False

    async def _source_for(self, slot: Slot) -> Source:
        """The slot's source tenant whose texts allow one more transfer, that transfer counted
        (before any await: no two clients take the last one)."""
        while slot.current < len(slot.chain) and slot.chain[slot.current].left <= 0:
            slot.current += 1
        creating = slot.current == len(slot.chain)
        if creating:
            slot.chain.append(Source({}, self.per_source, {}))
            self.added_sources += 1
        source = slot.chain[slot.current]
        source.left -= 1
        if creating:
            try:
                made = await self._source(slot.clients)
                source.tenant, source.wallets = made.tenant, made.wallets
            finally:
                source.ready.set()  # the slot's other clients wait on it
        await source.ready.wait()
        if not source.tenant:
            raise RuntimeError("could not create a source tenant during the run")
        return source

    async def _pin(self, conn: Connection, phone: str) -> tuple[int, bytes, str]:
        deadline = time.monotonic() + PIN_WAIT_S
        while True:
            status, raw = await conn.request(
                "GET", "/admin/dev/sms", headers=self.b.admin, params={"phone": phone, "limit": "5"}
            )
            if status != 200:
                return status, raw, ""
            for text in json.loads(raw)["data"]:
                m = PIN_RE.match(text["body"])
                if m:
                    return status, raw, m.group(1)
            if time.monotonic() >= deadline:
                return status, raw, ""
            await asyncio.sleep(0.02)

    async def request(self, w: int, i: int) -> bool:
        started = time.monotonic()
        conn = self.b.conns[w]
        slot = self.slots[w % len(self.slots)]
        source = await self._source_for(slot)
        wallet = source.wallets[w]
        source_key = {"X-Game-Secret-Key": source.tenant["sdk_key"]}
        phone = self.phones.take()
        body = {
            "player_email": wallet.player,
            "destination_tenant_id": slot.destination["tenant_id"],
            "amount": AMOUNT,
            "sender_phone": phone,
            "idempotency_key": f"bench-trf-{self.b.run_id}-{w}-{i}",
        }
        t0 = time.perf_counter()
        try:
            status, raw = await conn.request("POST", "/api/transfers/initiate-transfer", headers=source_key, body=body)
        except BaseException:
            wallet.uncertain = True
            raise
        if status != 201:
            return self._fail("initiate", status, raw)
        wallet.initiated += 1
        transfer_id = json.loads(raw)["transfer_id"]
        t1 = time.perf_counter()
        status, raw, pin = await self._pin(conn, phone)
        if not pin:
            return self._fail("pin", status, raw)
        t2 = time.perf_counter()
        status, raw = await conn.request(
            "POST", "/api/transfers/verify-sms", headers=source_key, body={"transfer_id": transfer_id, "pin": pin}
        )
        verified = json.loads(raw) if status == 200 else {}
        if verified.get("status") != "claimable" or not verified.get("claim_code"):
            return self._fail("verify", status, raw)
        t3 = time.perf_counter()
        there = f"td{w}-{i}-{self.b.run_id}@bench.test"
        destination_key = {"X-Game-Secret-Key": slot.destination["sdk_key"]}
        status, raw = await conn.request(
            "POST",
            "/api/transfers/claim-transfer",
            headers=destination_key,
            body={"claim_code": verified["claim_code"], "player_email": there},
        )
        t4 = time.perf_counter()
        claimed = json.loads(raw) if status == 200 else {}
        # A 200 that is not a completed transfer of this amount, claimed now, is not a transfer made.
        if (
            claimed.get("status") != "completed"
            or claimed.get("duplicate") is not False
            or claimed.get("transfer_id") != transfer_id
            or units(claimed.get("amount")) != Decimal(AMOUNT)
        ):
            return self._fail("claim", status, raw)
        self.completed.append(
            Completed(transfer_id, source.tenant["sdk_key"], slot.destination["sdk_key"], there, AMOUNT)
        )
        self.steps.append((started, t1 - t0, t2 - t1, t3 - t2, t4 - t3))
        return True

    # -- afterwards -------------------------------------------------------------------------

    async def _get(self, path: str, key: str) -> tuple[int, Any]:
        assert self.b.http is not None
        async with self.b.http.get(self.b.gateway + path, headers={"X-Game-Secret-Key": key}) as resp:
            return resp.status, await resp.json()

    async def check(self) -> dict[str, Any]:
        """Every completed transfer reads completed; every player holds what the transfers say."""
        gate = asyncio.Semaphore(READS_CONCURRENCY)
        wrong: list[dict[str, Any]] = []
        balances_wrong: list[dict[str, Any]] = []

        async def transfer(c: Completed) -> None:
            async with gate:
                status, state = await self._get(f"/api/transfers/{c.transfer_id}", c.destination_key)
                if (
                    status != 200
                    or state.get("status") != "completed"
                    or units(state.get("amount")) != Decimal(c.amount)
                ):
                    wrong.append({"transfer_id": c.transfer_id, "http_status": status, "read": state})
                status, out = await self._get(
                    f"/api/players/balance?player_email={c.destination_player}", c.destination_key
                )
                if status != 200 or units(out.get("balance")) != Decimal(c.amount):
                    balances_wrong.append({"player": c.destination_player, "expected": c.amount, "read": out})

        async def source(s: Wallet) -> None:
            async with gate:
                status, out = await self._get(f"/api/players/balance?player_email={s.player}", s.tenant["sdk_key"])
            expected = Decimal(FUNDING_UNITS) - s.initiated * Decimal(AMOUNT) * (1 + FEE_RATE)
            if status != 200 or units(out.get("balance")) != expected:
                balances_wrong.append({"player": s.player, "expected": str(expected), "read": out})

        sources = [w for slot in self.slots for s in slot.chain for w in s.wallets.values() if not w.uncertain]
        await asyncio.gather(*(transfer(c) for c in self.completed), *(source(s) for s in sources))
        return {
            "transfers_checked": len(self.completed),
            "transfers_not_completed": len(wrong),
            "transfers_wrong": wrong[:20],
            "balances_checked": len(self.completed) + len(sources),
            "balances_wrong": len(balances_wrong),
            "balances_wrong_first": balances_wrong[:20],
        }

    async def run(self) -> Run:
        await self.setup()
        run = await drive(NAME, self.b.duration_s, self.b.concurrency, self.request, warmup_s=self.b.warmup_s)
        measured = [s for s in self.steps if s[0] >= run.started]
        steps: dict[str, Any] = {}
        for k, step in enumerate(("initiate", "pin_read", "verify", "claim"), start=1):
            steps[f"{step}_p50_ms"] = pct_ms([s[k] for s in measured], 0.50)
            steps[f"{step}_p99_ms"] = pct_ms([s[k] for s in measured], 0.99)
        run.extra |= {
            "operation": "one whole transfer: initiate, the PIN read from the SMS outbox, verify, claim",
            **steps,
            "source_tenants": sum(len(slot.chain) for slot in self.slots),
            "destination_tenants": len(self.slots),
            "source_tenants_added_during_run": self.added_sources,
            "failures": dict(self.failures),
            "failure_messages": self.failure_messages,
            **await self.check(),
        }
        return run


def units(value: Any) -> Decimal | None:
    """An answer's decimal string of units, or None when it is not one."""
    try:
        return Decimal(str(value)) if isinstance(value, str) else None
    except InvalidOperation:
        return None


async def transfers(b: Bench) -> Run:
    """The `transfer` scenario on `b`'s network and clients."""
    return await TransferScenario(b).run()
