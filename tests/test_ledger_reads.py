"""Ledger reads through the public gateway: balances, the entries feed, revenue, the NDJSON export
(including 200,000 players streamed with flat memory), and the admin adjustments and check.

Every test makes its own tenants; players are funded with admin credits. The 200k export seeds its
players straight into the ledger's tables (as one balanced transaction from a world account of its
own) and removes them afterwards, so the shared ledger check stays ok for every other test.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import random
import re
import threading
import time
import urllib.parse
from collections import defaultdict
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.common import ids
from services.common.config import Settings
from services.common.stack import Stack
from tests.helpers import Api, Response, assert_envelope

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
BALANCE_KEYS = {"player_email", "balance", "available_balance", "pending"}

# -- helpers ------------------------------------------------------------------------------------


async def credit(api: Api, tenant_id: str, email: str, amount: str = "50", **extra: Any) -> Response:
    body = {
        "tenant_id": tenant_id,
        "player_email": email,
        "amount": amount,
        "reason": "test funding",
        "idempotency_key": ids.new_id("fund"),
        **extra,
    }
    return await api.post("/admin/players/credit", admin=True, json=body)


def with_key(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """An adjustment body with a fresh idempotency key (the admin API requires one)."""
    return {**body, **changes, "idempotency_key": ids.new_id("adj")}


async def funded(api: Api, tenant_id: str, email: str, amount: str = "50") -> dict[str, Any]:
    resp = await credit(api, tenant_id, email, amount)
    assert resp.status == 200, resp
    return dict(resp.body)


async def purchase(api: Api, key: str, email: str, price: str, quantity: int = 1) -> dict[str, Any]:
    body = {
        "player_email": email,
        "item_id": "sword",
        "item_name": "Sword",
        "price": price,
        "quantity": quantity,
        "idempotency_key": ids.new_id("test"),
    }
    resp = await api.post("/api/item-purchases/purchase-item", key=key, json=body)
    assert resp.status == 200, resp
    return dict(resp.body)


async def balance(api: Api, key: str, email: str) -> Response:
    return await api.get("/api/players/balance?" + urllib.parse.urlencode({"player_email": email}), key=key)


async def balance_of(api: Api, key: str, email: str) -> str:
    resp = await balance(api, key, email)
    assert resp.status == 200, resp
    return str(resp.body["balance"])


async def entries_page(api: Api, key: str, *, cursor: str | None = None, limit: int | None = None) -> Response:
    params: dict[str, Any] = {}
    if cursor is not None:
        params["cursor"] = cursor
    if limit is not None:
        params["limit"] = limit
    return await api.get("/api/ledger/entries?" + urllib.parse.urlencode(params), key=key)


async def all_entries(api: Api, key: str) -> list[dict[str, Any]]:
    resp = await entries_page(api, key, limit=1000)
    assert resp.status == 200, resp
    assert resp.body["has_more"] is False
    return list(resp.body["data"])


def entry_seq(entry_id: str) -> int:
    """The opaque entry id is base64 of "e:<n>"; decoded only to check the order."""
    text = base64.urlsafe_b64decode(entry_id + "=" * (-len(entry_id) % 4)).decode()
    kind, _, value = text.partition(":")
    assert kind == "e", entry_id
    return int(value)


async def export(api: Api, key: str) -> tuple[aiohttp.ClientResponse, list[Any]]:
    assert api.session is not None
    async with api.session.get(
        api.base_url + "/api/players/balances/export", headers={"X-Game-Secret-Key": key}
    ) as resp:
        raw = await resp.read()
    assert resp.status == 200, raw[:500]
    text = raw.decode()
    assert text.endswith("\n")
    return resp, [json.loads(line) for line in text.split("\n")[:-1]]


def assert_summary(line: dict[str, Any], count: int) -> None:
    assert line["count"] == count
    assert ISO.match(line["snapshot_at"]), line
    snapshot = datetime.datetime.strptime(line["snapshot_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert abs((datetime.datetime.now(datetime.UTC) - snapshot).total_seconds()) < 300
    assert line["currency_name"] == "Gold Coins"


def minor_text(minor: int) -> str:
    """What the API shows for an amount of `minor` hundredths: "3", "0.35", "12.50"."""
    whole, frac = divmod(minor, 100)
    return str(whole) if frac == 0 else f"{whole}.{frac:02d}"


# -- 1. one player's balance ------------------------------------------------------------------


async def test_single_balance_reads_zero_then_credits_minus_purchases_and_ignores_case(api: Api) -> None:
    t = await api.create_tenant()
    key = t["sdk_key"]
    resp = await balance(api, key, "nobody@x.com")
    assert resp.status == 200, resp
    assert resp.body == {
        "player_email": "nobody@x.com",
        "balance": "0",
        "available_balance": "0",
        "pending": "0",
        "currency_name": "Gold Coins",
    }

    assert (await funded(api, t["tenant_id"], "Player@X.com", "12.34"))["new_balance"] == "12.34"
    bought = await purchase(api, key, "player@x.com", "1.05", quantity=2)
    assert bought["total"] == "2.10"
    assert bought["new_balance"] == "10.24"
    for spelling in ("player@x.com", "Player@X.com", "PLAYER@X.COM", "  player@x.com "):
        resp = await balance(api, key, spelling)
        assert resp.status == 200, resp
        assert resp.body == {
            "player_email": "player@x.com",
            "balance": "10.24",
            "available_balance": "10.24",
            "pending": "0",
            "currency_name": "Gold Coins",
        }

    for bad in ("not-an-email", "a@b", "two@@x.com", "sp ace@x.com", "x" * 65 + "@x.com"):
        assert_envelope(await balance(api, key, bad), 400, "INVALID_PLAYER_EMAIL")
    assert_envelope(await api.get("/api/players/balance", key=key), 400, "MISSING_PARAMETER")
    assert_envelope(await api.get("/api/players/balance?player_email=", key=key), 400, "MISSING_PARAMETER")
    assert_envelope(await api.get("/api/players/balance?player_email=p%40x.com"), 401, "MISSING_API_KEY")


# -- 2. many balances at once -----------------------------------------------------------------


async def test_batch_balances_up_to_1000_in_request_order(api: Api) -> None:
    t = await api.create_tenant()
    key = t["sdk_key"]
    emails = [f"p{i:04d}@batch.test" for i in range(1000)]
    random.Random(7).shuffle(emails)  # not sorted: the answer must follow the request
    rich = {emails[0]: "1", emails[500]: "2.50", emails[999]: "0.07"}
    for email, amount in rich.items():
        await funded(api, t["tenant_id"], email, amount)

    resp = await api.post("/api/players/balances", key=key, json={"player_emails": emails})
    assert resp.status == 200, resp
    assert resp.body["currency_name"] == "Gold Coins"
    got = resp.body["balances"]
    assert [b["player_email"] for b in got] == emails
    for b in got:
        assert set(b) == BALANCE_KEYS
        want = rich.get(b["player_email"], "0")
        assert (b["balance"], b["available_balance"], b["pending"]) == (want, want, "0")

    # Mixed case reads the same wallet, normalised.
    resp = await api.post("/api/players/balances", key=key, json={"player_emails": [emails[500].upper(), "new@x.com"]})
    assert resp.status == 200, resp
    assert [(b["player_email"], b["balance"]) for b in resp.body["balances"]] == [
        (emails[500], "2.50"),
        ("new@x.com", "0"),
    ]

    too_many = [f"q{i}@x.com" for i in range(1001)]
    assert_envelope(
        await api.post("/api/players/balances", key=key, json={"player_emails": too_many}), 400, "INVALID_PARAMETER"
    )
    assert_envelope(
        await api.post("/api/players/balances", key=key, json={"player_emails": []}), 400, "INVALID_PARAMETER"
    )
    missing = await api.post("/api/players/balances", key=key, json={})
    assert_envelope(missing, 400, "MISSING_PARAMETER")
    assert missing.body["param"] == "player_emails"
    assert_envelope(
        await api.post("/api/players/balances", key=key, json={"player_emails": "a@x.com"}), 400, "INVALID_PARAMETER"
    )
    assert_envelope(
        await api.post("/api/players/balances", key=key, json={"player_emails": ["a@x.com", "broken", "b@x.com"]}),
        400,
        "INVALID_PLAYER_EMAIL",
    )
    assert_envelope(
        await api.post("/api/players/balances", key=key, json={"player_emails": ["a@x.com"], "extra": 1}),
        400,
        "UNKNOWN_FIELD",
    )


# -- 3. tenants never see each other ----------------------------------------------------------


async def test_tenant_isolation_of_balances_entries_export_and_revenue(api: Api) -> None:
    a = await api.create_tenant()
    b = await api.create_tenant()
    await funded(api, a["tenant_id"], "shared@x.com", "50")
    await funded(api, a["tenant_id"], "only-a@x.com", "5")
    a_bought = [await purchase(api, a["sdk_key"], "shared@x.com", "10") for _ in range(2)]
    await funded(api, b["tenant_id"], "only-b@x.com", "3")
    b_bought = await purchase(api, b["sdk_key"], "only-b@x.com", "1")

    # The same email is another wallet in B.
    assert await balance_of(api, a["sdk_key"], "shared@x.com") == "30"
    assert await balance_of(api, b["sdk_key"], "shared@x.com") == "0"
    resp = await api.post("/api/players/balances", key=b["sdk_key"], json={"player_emails": ["shared@x.com"]})
    assert resp.body["balances"][0]["balance"] == "0"

    a_entries = await all_entries(api, a["sdk_key"])
    b_entries = await all_entries(api, b["sdk_key"])
    a_txns = {e["transaction_id"] for e in a_entries}
    b_txns = {e["transaction_id"] for e in b_entries}
    assert {p["transaction_id"] for p in a_bought} <= a_txns
    assert b_bought["transaction_id"] in b_txns
    assert not a_txns & b_txns
    assert len(b_entries) == 2 + 3  # B's credit and B's purchase, nothing of A's
    assert all(e["account"] != "player_other_tenant" for e in a_entries + b_entries)
    assert {e.get("player_email") for e in b_entries} == {"only-b@x.com", None}
    # A's entry ids are no key into B's feed: B starting after A's first entry still sees only B's.
    resp = await entries_page(api, b["sdk_key"], cursor=a_entries[0]["entry_id"])
    assert resp.status == 200, resp
    assert {e["transaction_id"] for e in resp.body["data"]} <= b_txns

    _, b_lines = await export(api, b["sdk_key"])
    assert [line["player_email"] for line in b_lines[:-1]] == ["only-b@x.com"]
    assert_summary(b_lines[-1], 1)
    _, a_lines = await export(api, a["sdk_key"])
    assert sorted(line["player_email"] for line in a_lines[:-1]) == ["only-a@x.com", "shared@x.com"]

    a_rev = (await api.get("/api/revenue", key=a["sdk_key"])).body
    b_rev = (await api.get("/api/revenue", key=b["sdk_key"])).body
    assert a_rev["lifetime_units"] == "18"
    assert b_rev["lifetime_units"] == "0.90"
    assert b_rev["owed_units"] == "0.90"


# -- 4. the entries feed ----------------------------------------------------------------------


async def test_entries_feed_pages_every_entry_once_in_order(api: Api) -> None:
    t = await api.create_tenant()
    key, tid = t["sdk_key"], t["tenant_id"]
    credits = [await funded(api, tid, "p1@x.com"), await funded(api, tid, "p2@x.com")]
    purchases = [
        await purchase(api, key, "p1@x.com", "10"),
        await purchase(api, key, "p2@x.com", "3.33", quantity=3),
        await purchase(api, key, "p1@x.com", "0.17"),  # 0.16 to the partner, 0.01 (0.017 down) to the network
    ]
    credits.append(await funded(api, tid, "p2@x.com", "1.50"))

    everything = await all_entries(api, key)
    assert len(everything) == 2 * len(credits) + 3 * len(purchases)
    seqs = [entry_seq(e["entry_id"]) for e in everything]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    # limit=2 pages through the same entries, each exactly once, then has_more is false.
    paged: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        resp = await entries_page(api, key, cursor=cursor, limit=2)
        assert resp.status == 200, resp
        pages += 1
        assert len(resp.body["data"]) <= 2
        paged += resp.body["data"]
        cursor = resp.body["next_cursor"]
        assert cursor == resp.body["data"][-1]["entry_id"]
        if not resp.body["has_more"]:
            break
        assert len(resp.body["data"]) == 2
        assert pages < 100
    assert paged == everything
    assert pages == (len(everything) + 1) // 2

    # The last cursor tails the feed: nothing now, then exactly what is new.
    resp = await entries_page(api, key, cursor=cursor, limit=2)
    assert resp.body == {"data": [], "has_more": False, "next_cursor": cursor}
    late = await purchase(api, key, "p2@x.com", "1")
    resp = await entries_page(api, key, cursor=cursor)
    assert {e["transaction_id"] for e in resp.body["data"]} == {late["transaction_id"]}
    assert len(resp.body["data"]) == 3

    by_txn: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in everything:
        assert set(e) >= {"entry_id", "transaction_id", "account", "amount", "balance_after", "kind", "created_at"}
        assert ISO.match(e["created_at"])
        by_txn[e["transaction_id"]].append(e)
    assert set(by_txn) == {c["transaction_id"] for c in credits} | {p["transaction_id"] for p in purchases}
    for txn_entries in by_txn.values():
        assert sum(Decimal(e["amount"]) for e in txn_entries) == 0
        for e in txn_entries:
            if e["account"] in ("player", "revenue"):
                assert e["balance_after"] is not None
            else:
                assert e["balance_after"] is None

    for p, (email, total, partner, fee, after, revenue_after) in zip(
        purchases,
        [
            ("p1@x.com", "-10", "9", "1", "40", "9"),
            ("p2@x.com", "-9.99", "9", "0.99", "40.01", "18"),  # the fee, 0.999, rounds down
            ("p1@x.com", "-0.17", "0.16", "0.01", "39.83", "18.16"),
        ],
        strict=True,
    ):
        rows = {e["account"]: e for e in by_txn[p["transaction_id"]]}
        assert set(rows) == {"player", "revenue", "network_fee"}
        assert all(e["kind"] == "item_purchase" for e in rows.values())
        assert rows["player"]["player_email"] == email
        assert (rows["player"]["amount"], rows["player"]["balance_after"]) == (total, after)
        assert (rows["revenue"]["amount"], rows["revenue"]["balance_after"]) == (partner, revenue_after)
        assert (rows["network_fee"]["amount"], rows["network_fee"]["balance_after"]) == (fee, None)
        assert (p["partner_amount"], p["network_fee"]) == (partner, fee)
    for c in credits:
        rows = {e["account"]: e for e in by_txn[c["transaction_id"]]}
        assert set(rows) == {"player", "world"}
        assert rows["player"]["amount"] == c["amount"]
        assert rows["player"]["balance_after"] == c["new_balance"]
        assert rows["world"]["balance_after"] is None
        assert all(e["kind"] == "adjustment_credit" for e in rows.values())

    for bad in ("garbage", "!!!", base64.urlsafe_b64encode(b"e:abc").decode(), base64.b64encode(b"x:1").decode()):
        assert_envelope(await entries_page(api, key, cursor=bad), 400, "INVALID_PARAMETER")
    for limit in ("0", "1001", "-1", "two", "1.5", ""):
        resp = await api.get("/api/ledger/entries?limit=" + limit, key=key)
        assert_envelope(resp, 400, "INVALID_PARAMETER")
    assert (await entries_page(api, key, limit=1000)).status == 200


async def test_entries_limit_with_a_unicode_digit_is_400_not_500(api: Api) -> None:
    t = await api.create_tenant()
    for limit in ("²", "①"):
        resp = await api.get("/api/ledger/entries?" + urllib.parse.urlencode({"limit": limit}), key=t["sdk_key"])
        assert_envelope(resp, 400, "INVALID_PARAMETER")


# -- 5. revenue --------------------------------------------------------------------------------


async def test_revenue_after_purchases_with_the_default_fee(api: Api) -> None:
    t = await api.create_tenant()
    assert t["tenant"]["network_fee_percentage"] == "10"
    resp = await api.get("/api/revenue", key=t["sdk_key"])
    assert resp.status == 200, resp
    assert resp.body == {
        "owed_usd": "0.00",
        "paid_out_usd": "0.00",
        "lifetime_usd": "0.00",
        "owed_units": "0",
        "paid_out_units": "0",
        "lifetime_units": "0",
        "currency_name": "Gold Coins",
    }
    await funded(api, t["tenant_id"], "buyer@x.com", "50")
    for _ in range(3):
        bought = await purchase(api, t["sdk_key"], "buyer@x.com", "10")
        assert (bought["partner_amount"], bought["network_fee"]) == ("9", "1")
    resp = await api.get("/api/revenue", key=t["sdk_key"])
    assert resp.body == {
        "owed_usd": "2.70",
        "paid_out_usd": "0.00",
        "lifetime_usd": "2.70",
        "owed_units": "27",
        "paid_out_units": "0",
        "lifetime_units": "27",
        "currency_name": "Gold Coins",
    }
    # Admin credits move no revenue.
    await funded(api, t["tenant_id"], "buyer@x.com", "5")
    assert (await api.get("/api/revenue", key=t["sdk_key"])).body["lifetime_units"] == "27"


async def test_revenue_with_a_fractional_fee_percentage(api: Api) -> None:
    t = await api.create_tenant(network_fee_percentage="12.5")
    assert t["tenant"]["network_fee_percentage"] == "12.5"
    await funded(api, t["tenant_id"], "buyer@x.com", "5")
    bought = await purchase(api, t["sdk_key"], "buyer@x.com", "1")
    # 12.5% of 1 is 0.125: the network's fee rounds down to 0.12, the partner keeps the rest.
    assert (bought["total"], bought["partner_amount"], bought["network_fee"]) == ("1", "0.88", "0.12")
    assert bought["new_balance"] == "4"
    resp = await api.get("/api/revenue", key=t["sdk_key"])
    assert resp.body["lifetime_units"] == "0.88"
    assert resp.body["owed_units"] == "0.88"
    assert resp.body["paid_out_units"] == "0"
    assert resp.body["lifetime_usd"] == "0.08"  # 0.88 units = $0.088, whole cents only
    fee = [e for e in await all_entries(api, t["sdk_key"]) if e["account"] == "network_fee"]
    assert [e["amount"] for e in fee] == ["0.12"]


# -- 6. the export ----------------------------------------------------------------------------


async def test_export_streams_every_player_as_ndjson(api: Api) -> None:
    t = await api.create_tenant()
    players = 300
    amounts = {f"player{i:03d}@export.test": minor_text(100 + 7 * i) for i in range(players)}
    emails = list(amounts)
    for start in range(0, players, 50):
        batch = emails[start : start + 50]
        # Mixed case on the way in; the export shows the normalised email.
        results = await asyncio.gather(*(credit(api, t["tenant_id"], e.upper(), amounts[e]) for e in batch))
        assert all(r.status == 200 for r in results), [r for r in results if r.status != 200]
    await purchase(api, t["sdk_key"], emails[0], "0.5")
    amounts[emails[0]] = minor_text(100 - 50)

    resp, lines = await export(api, t["sdk_key"])
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    assert len(lines) == players + 1
    rows = lines[:-1]
    assert all(set(row) == BALANCE_KEYS for row in rows)
    assert {row["player_email"]: row["balance"] for row in rows} == amounts
    assert len({row["player_email"] for row in rows}) == players
    assert all(row["available_balance"] == row["balance"] and row["pending"] == "0" for row in rows)
    assert_summary(lines[-1], players)


async def test_export_of_a_tenant_without_players_is_just_the_summary(api: Api) -> None:
    t = await api.create_tenant()
    resp, lines = await export(api, t["sdk_key"])
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    assert len(lines) == 1
    assert_summary(lines[0], 0)
    assert_envelope(await api.get("/api/players/balances/export"), 401, "MISSING_API_KEY")


# -- 7. the export of 200,000 players with flat memory ----------------------------------------

BULK_PLAYERS = 200_000
# Measured: the gateway grows ~5 MiB, the ledger <1 MiB. 200k rows held at once would cost >100 MiB
# as protobuf messages, and 20 MiB for the bare NDJSON bytes alone (40 MiB while joined and encoded).
RSS_GROWTH_MAX_MIB = 16.0
STALL_S = 3.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples the resident memory of some processes every few milliseconds from a thread of its
    own (so a busy event loop in the test does not thin the samples out), keeping each peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.baseline = {name: rss_mib(pid) for name, pid in pids.items()}
        self.peak = dict(self.baseline)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak[name] = max(self.peak[name], rss_mib(pid))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def growth(self) -> dict[str, float]:
        return {name: round(self.peak[name] - self.baseline[name], 1) for name in self.pids}


async def seed_bulk_players(conn: asyncpg.Connection, tenant_id: str, txn_id: str, world: str, n: int) -> None:
    """n players u<i>@bulk.test holding i hundredths each, funded by one balanced transaction from
    a world account of this test's own, so the ledger check (total, drift, balance) stays ok.

    No ledger write lock is taken: every row written belongs to this test's new tenant or its own
    world account, which the engine never touches, and only this tenant's feed shows the entries,
    so the engine is not held up for the seconds the insert takes."""
    total = n * (n + 1) // 2
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO transactions (id, tenant_id, kind, status, postings, metadata, created_at)"
            " VALUES ($1, $2, 'bulk_seed', 'posted', '[]', '{\"seeded_by\": \"tests/test_ledger_reads.py\"}', now())",
            txn_id,
            tenant_id,
        )
        await conn.execute(
            "INSERT INTO accounts (code, kind, constrained, debits_posted) VALUES ($1, 'world', false, $2)",
            world,
            total,
        )
        await conn.execute(
            "INSERT INTO accounts (code, kind, tenant_id, player_email, constrained, credits_posted)"
            " SELECT 'player:' || $1::text || ':u' || i || '@bulk.test', 'player', $1::text,"
            "        'u' || i || '@bulk.test', true, i"
            " FROM generate_series(1, $2::int) AS i",
            tenant_id,
            n,
        )
        await conn.execute(
            "INSERT INTO entries (txn_id, tenant_id, account_id, amount, balance_after, created_at)"
            " SELECT $1, $2, id, credits_posted - debits_posted, credits_posted - debits_posted, now()"
            " FROM accounts WHERE (tenant_id = $2 AND kind = 'player') OR code = $3 ORDER BY id",
            txn_id,
            tenant_id,
            world,
        )


async def remove_bulk_players(conn: asyncpg.Connection, tenant_id: str, txn_id: str, world: str) -> None:
    async with conn.transaction():
        await conn.execute("DELETE FROM entries WHERE txn_id = $1", txn_id)
        await conn.execute("DELETE FROM transactions WHERE id = $1", txn_id)
        await conn.execute(
            "DELETE FROM accounts WHERE tenant_id = $1 AND kind = 'player' AND player_email LIKE '%@bulk.test'",
            tenant_id,
        )
        await conn.execute("DELETE FROM accounts WHERE code = $1", world)


@pytest.mark.slow
async def test_export_streams_200k_players_with_flat_memory(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    tenant_id, key = t["tenant_id"], t["sdk_key"]
    empty = await api.create_tenant()
    txn_id = ids.new_id("txn")
    world = f"world:bulk-seed:{tenant_id}"
    conn = await asyncpg.connect(
        stack.env["INVO_DATABASE_URL"],
        timeout=10.0,
        server_settings={"search_path": Settings.from_env(stack.env).schema("ledger")},
    )
    try:
        started = time.monotonic()
        await seed_bulk_players(conn, tenant_id, txn_id, world, BULK_PLAYERS)
        seeded_s = time.monotonic() - started
        try:
            # The seed keeps the ledger whole.
            check = await api.get("/admin/ledger/check", admin=True)
            assert check.status == 200, check
            assert (check.body["ok"], check.body["total_balance"]) == (True, "0"), check.body
            # Warm the export path up on an empty tenant, so the baseline is the steady state.
            await export(api, empty["sdk_key"])

            sampler = RssSampler({"gateway": stack.procs["gateway"].pid, "ledger": stack.procs["ledger"].pid})
            seen = bytearray(BULK_PLAYERS + 1)
            lines = reads = 0
            summary: dict[str, Any] | None = None
            streamed_at = time.monotonic()
            with sampler:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
                    session.get(
                        stack.gateway_url + "/api/players/balances/export", headers={"X-Game-Secret-Key": key}
                    ) as resp,
                ):
                    assert resp.status == 200
                    assert resp.headers["Content-Type"] == "application/x-ndjson"
                    assert "Content-Length" not in resp.headers  # streamed, not one prepared body
                    carry = b""
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        reads += 1
                        if reads == 1:
                            # A slow client: the ledger could produce every row in this pause. With
                            # backpressure all the way down, nobody holds them while we do not read.
                            await asyncio.sleep(STALL_S)
                        parts = (carry + chunk).split(b"\n")
                        carry = parts.pop()
                        for part in parts:
                            lines += 1
                            row = json.loads(part)
                            assert summary is None, "a line after the summary"
                            if "count" in row:
                                summary = row
                                continue
                            email = row["player_email"]
                            assert email.startswith("u") and email.endswith("@bulk.test"), row
                            i = int(email[1 : -len("@bulk.test")])
                            assert not seen[i], f"{email} twice"
                            seen[i] = 1
                            assert row["balance"] == row["available_balance"] == minor_text(i), row
                            assert row["pending"] == "0"
                    assert carry == b""
            streamed_s = time.monotonic() - streamed_at
        finally:
            await remove_bulk_players(conn, tenant_id, txn_id, world)
    finally:
        await conn.close()

    growth = sampler.growth()
    print(
        f"\n200k export: seeded in {seeded_s:.1f}s, streamed in {streamed_s:.1f}s (with a {STALL_S}s reader stall),"
        f" {lines} lines in {reads} reads, {sampler.samples} RSS samples;"
        f" baseline MiB {sampler.baseline}, peak MiB {sampler.peak}, growth MiB {growth}"
    )
    assert summary is not None
    assert lines == BULK_PLAYERS + 1
    assert summary["count"] == BULK_PLAYERS
    assert_summary(summary, BULK_PLAYERS)
    assert sum(seen) == BULK_PLAYERS and not seen[0]
    assert sampler.samples >= 200, "too few RSS samples to say anything about the peak"
    for name, mib in growth.items():
        assert mib < RSS_GROWTH_MAX_MIB, f"{name} grew {mib} MiB exporting {BULK_PLAYERS} players"
    # And the ledger is whole again without them.
    check = await api.get("/admin/ledger/check", admin=True)
    assert (check.body["ok"], check.body["total_balance"]) == (True, "0"), check.body


# -- 8. admin adjustments and the ledger check ------------------------------------------------


async def test_admin_credit_and_debit(api: Api) -> None:
    t = await api.create_tenant()
    tid, key = t["tenant_id"], t["sdk_key"]
    resp = await credit(api, tid, "Admin@X.com", "50")
    assert resp.status == 200, resp
    assert resp.body["status"] == "success"
    assert resp.body["transaction_id"].startswith("txn_")
    assert (resp.body["tenant_id"], resp.body["player_email"]) == (tid, "admin@x.com")
    assert (resp.body["amount"], resp.body["new_balance"], resp.body["duplicate"]) == ("50", "50", False)
    assert (resp.body["currency_name"], resp.body["reason"]) == ("Gold Coins", "test funding")

    debit = {"tenant_id": tid, "player_email": "admin@x.com", "amount": "20.5", "reason": "chargeback"}
    resp = await api.post("/admin/players/debit", admin=True, json=with_key(debit))
    assert resp.status == 200, resp
    assert (resp.body["amount"], resp.body["new_balance"]) == ("20.50", "29.50")
    assert await balance_of(api, key, "admin@x.com") == "29.50"

    # More than the balance: refused, nothing moves.
    entries_before = await all_entries(api, key)
    resp = await api.post("/admin/players/debit", admin=True, json=with_key(debit, amount="29.51"))
    assert_envelope(resp, 402, "INSUFFICIENT_BALANCE")
    assert await balance_of(api, key, "admin@x.com") == "29.50"
    assert await all_entries(api, key) == entries_before
    resp = await api.post("/admin/players/debit", admin=True, json=with_key(debit, amount="29.50"))
    assert resp.body["new_balance"] == "0"
    assert_envelope(
        await api.post("/admin/players/debit", admin=True, json=with_key(debit, amount="0.01")),
        402,
        "INSUFFICIENT_BALANCE",
    )
    # An unknown player has nothing to debit.
    assert_envelope(
        await api.post("/admin/players/debit", admin=True, json=with_key(debit, player_email="ghost@x.com")),
        402,
        "INSUFFICIENT_BALANCE",
    )

    # One idempotency key, one movement; another body with it is refused.
    assert (await credit(api, tid, "admin@x.com", "5", idempotency_key="k-1")).body["new_balance"] == "5"
    assert_envelope(await credit(api, tid, "admin@x.com", "6", idempotency_key="k-1"), 400, "IDEMPOTENCY_KEY_REUSED")
    assert_envelope(
        await api.post(
            "/admin/players/debit",
            admin=True,
            json={**debit, "amount": "5", "idempotency_key": "k-1"},
        ),
        400,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert await balance_of(api, key, "admin@x.com") == "5"


async def test_admin_credit_retry_with_the_same_idempotency_key_replays(api: Api) -> None:
    t = await api.create_tenant()
    first = await credit(api, t["tenant_id"], "retry@x.com", "7", idempotency_key="retry-1")
    assert first.status == 200, first
    again = await credit(api, t["tenant_id"], "retry@x.com", "7", idempotency_key="retry-1")
    assert again.status == 200, again
    assert again.body["duplicate"] is True
    assert again.body["transaction_id"] == first.body["transaction_id"]
    assert again.body["new_balance"] == "7"
    assert await balance_of(api, t["sdk_key"], "retry@x.com") == "7"


async def test_admin_adjustments_refuse_bad_requests(api: Api) -> None:
    t = await api.create_tenant()
    tid = t["tenant_id"]
    good = {"tenant_id": tid, "player_email": "p@x.com", "amount": "1", "reason": "why", "idempotency_key": "adj-1"}
    for path in ("/admin/players/credit", "/admin/players/debit"):
        cases: list[tuple[dict[str, Any], int, str]] = [
            # Required: a key invented by the server would make a retried request move money twice.
            ({k: v for k, v in good.items() if k != "idempotency_key"}, 400, "MISSING_IDEMPOTENCY_KEY"),
            ({**good, "idempotency_key": ""}, 400, "INVALID_IDEMPOTENCY_KEY"),
            ({k: v for k, v in good.items() if k != "reason"}, 400, "MISSING_PARAMETER"),
            ({**good, "reason": "   "}, 400, "INVALID_PARAMETER"),
            ({k: v for k, v in good.items() if k != "amount"}, 400, "MISSING_PARAMETER"),
            ({**good, "amount": "0"}, 400, "INVALID_PARAMETER"),
            ({**good, "amount": "-1"}, 400, "INVALID_PARAMETER"),
            ({**good, "amount": "1.001"}, 400, "INVALID_PARAMETER"),
            ({**good, "amount": True}, 400, "INVALID_PARAMETER"),
            ({**good, "amount": "1e3"}, 400, "INVALID_PARAMETER"),
            ({**good, "player_email": "nope"}, 400, "INVALID_PLAYER_EMAIL"),
            ({k: v for k, v in good.items() if k != "tenant_id"}, 400, "MISSING_PARAMETER"),
            ({**good, "tenant_id": "tn_" + "0" * 26}, 404, "TENANT_NOT_FOUND"),
            ({**good, "bogus": 1}, 400, "UNKNOWN_FIELD"),
        ]
        for body, status, code in cases:
            assert_envelope(await api.post(path, admin=True, json=body), status, code)
        # An SDK key is no admin credential, in either header.
        assert_envelope(await api.post(path, key=t["sdk_key"], json=good), 401, "MISSING_ADMIN_TOKEN")
        resp = await api.post(path, json=good, headers={"Authorization": f"Bearer {t['sdk_key']}"})
        assert_envelope(resp, 401, "INVALID_ADMIN_TOKEN")
    assert await balance_of(api, t["sdk_key"], "p@x.com") == "0"
    assert await all_entries(api, t["sdk_key"]) == []
    assert_envelope(await api.get("/admin/ledger/check", key=t["sdk_key"]), 401, "MISSING_ADMIN_TOKEN")


async def test_ledger_check_is_ok(api: Api) -> None:
    t = await api.create_tenant()
    await funded(api, t["tenant_id"], "c@x.com", "3")
    await purchase(api, t["sdk_key"], "c@x.com", "1")
    resp = await api.get("/admin/ledger/check", admin=True)
    assert resp.status == 200, resp
    assert resp.body["ok"] is True, resp.body
    assert resp.body["total_balance"] == "0"
    assert resp.body["negative_accounts"] == []
    assert resp.body["unbalanced_transactions"] == []
    assert resp.body["drifted_accounts"] == []
    assert resp.body["accounts"] >= 4  # the player, the revenue, the network's fees, world:adjustments
    assert resp.body["transactions"] >= 2
