"""Account numbers: only their last four digits, anywhere; and a data key rotated under live rows.

The first test writes payouts with account numbers no one else writes, takes them through every
state, and then searches for the whole number (and its digits but the last four) in every column of
every table of the database, every process's log, every event and webhook body, the ACH
simulator's journal and every answer the API gave. The second rotates the key that seals them.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import secrets
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import aiohttp
import asyncpg

from devstack.stack import Stack
from services.common.config import Settings
from services.common.crypto import Keyring
from services.payouts.store import PUBLIC_STATUSES
from tests import payouts_support as ps
from tests.helpers import Api, Response, assert_envelope, eventually
from tests.stream_support import Seen, read_events
from tests.webhooks_support import Receiver, list_all

ROOT = pathlib.Path(__file__).resolve().parents[1]
Found = list[tuple[str, str]]  # (where, the text there)


def account(last4: str, prefix: str = "") -> str:
    """A number written nowhere else: `prefix`, then random digits, then `last4` (12 digits at least)."""
    middle = str(secrets.randbelow(9 * 10**7) + 10**7) if not prefix else str(secrets.randbelow(9 * 10**4) + 10**4)
    return f"{prefix}{middle}{last4}"


def token(text: str) -> re.Pattern[str]:
    """`text` as a whole token: no digit or letter on either side."""
    return re.compile(rf"(?<![0-9A-Za-z]){re.escape(text)}(?![0-9A-Za-z])")


class Needles:
    """Each number whole, and its digits without the last four, as tokens; in hex too (for bytea)."""

    def __init__(self, numbers: Iterable[str]) -> None:
        parts = [p for n in numbers for p in (n, n[:-4])]
        self.tokens = [(p, token(p)) for p in parts]
        self.hex = [(p, p.encode().hex()) for p in parts]

    def in_text(self, text: str) -> list[str]:
        found = [p for p, pattern in self.tokens if pattern.search(text)]
        low = text.lower()
        return found + [f"{p} (hex)" for p, h in self.hex if h in low]

    def scan(self, found: Found) -> list[str]:
        return [f"{where}: {hit}" for where, text in found for hit in self.in_text(text)]


def texts(label: str, values: Iterable[Any]) -> Found:
    return [(f"{label}[{i}]", v if isinstance(v, str) else json.dumps(v)) for i, v in enumerate(values)]


async def database(stack: Stack) -> Found:
    """Every column of every row of every table (and view) of every schema, as text; bytea also
    as hex and as escaped text."""
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    out: Found = []
    try:
        columns = await conn.fetch(
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_schema NOT LIKE 'pg_toast%'"
            " ORDER BY table_schema, table_name, ordinal_position"
        )
        tables: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for c in columns:
            tables.setdefault((c["table_schema"], c["table_name"]), []).append((c["column_name"], c["data_type"]))
        assert len(tables) >= 20, sorted(tables)  # every service's schema was read

        def q(name: str) -> str:
            return '"' + name.replace('"', '""') + '"'

        for (schema, table), cols in tables.items():
            exprs, names = [], []
            for name, kind in cols:
                exprs.append(f"{q(name)}::text")
                names.append(name)
                if kind == "bytea":
                    exprs += [f"encode({q(name)}, 'hex')", f"encode({q(name)}, 'escape')"]
                    names += [f"{name}(hex)", f"{name}(escape)"]
            for row in await conn.fetch(f"SELECT {', '.join(exprs)} FROM {q(schema)}.{q(table)}"):
                out += [(f"{schema}.{table}.{names[i]}", v) for i, v in enumerate(row) if v is not None]
    finally:
        await conn.close()
    return out


def logs(stack: Stack) -> Found:
    found = [(p.name, p.read_bytes().decode(errors="replace")) for p in sorted(stack.logs.glob("*.log"))]
    names = {name for name, _ in found}
    assert {"gateway.log", "payouts.log", "ach_sim.log", "webhooks.log"} <= names, names
    return found


class Sim:
    """The ACH simulator's test controls (`/_sim/`)."""

    def __init__(self, stack: Stack, session: aiohttp.ClientSession) -> None:
        self.base, self.session = stack.env["INVO_ACH_API_BASE"], session

    async def call(self, method: str, action: str, **kw: Any) -> Any:
        async with self.session.request(method, f"{self.base}/_sim/{action}", **kw) as resp:
            body = await resp.json()
            assert resp.status == 200, (action, resp.status, body)
            return body

    async def order_last4(self, order_id: str) -> set[str]:
        """The last four digits of every webhook body the simulator made for the order."""
        made = (await self.call("GET", "webhooks", params={"payment_order_id": order_id}))["webhooks"]
        assert made, order_id
        return {d["account_number_safe"] for w in made for d in w["data"]["receiving_account"]["account_details"]}


class Answers:
    """Every answer the API gave the test."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, Any]] = []

    def keep(self, what: str, resp: Response) -> Response:
        self.bodies.append((what, resp.body))
        return resp

    def found(self) -> Found:
        return [(f"answer {what}", json.dumps(body)) for what, body in self.bodies]


def shown_last4(value: Any) -> list[tuple[str, str]]:
    """(payout_id, account_last4) of every payout in an answer, however deep."""
    if isinstance(value, dict):
        own = [(value["payout_id"], value["bank_account"]["account_last4"])] if "bank_account" in value else []
        return own + [b for v in value.values() for b in shown_last4(v)]
    if isinstance(value, list):
        return [b for v in value for b in shown_last4(v)]
    return []


def test_the_search_matches_whole_tokens_only() -> None:
    n = "987654324827"
    needles = Needles([n])
    assert needles.in_text(f'{{"n": "{n}"}}') == [n] and needles.in_text("x 98765432 y") == ["98765432"]
    assert needles.in_text(f"1{n} {n}0 a98765432 987654320") == []
    assert needles.in_text("\\x" + n.encode().hex()) == [f"{n} (hex)", "98765432 (hex)"]
    assert needles.in_text('"account_last4": "4827"') == []


async def test_an_account_number_is_shown_nowhere_but_its_last_four_digits(api: Api, stack: Stack) -> None:
    number, failing = account("4827"), account("3519", prefix="11111111")  # 12 digits; 17, failing at the bank
    needles, seen = Needles([number, failing]), Answers()
    rx = Receiver()
    await rx.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await _every_state(api, stack, Sim(stack, session), rx, seen, needles, number, failing)
    finally:
        await rx.close()
    await ps.check_ledger(api)


async def _every_state(
    api: Api, stack: Stack, sim: Sim, rx: Receiver, seen: Answers, needles: Needles, number: str, failing: str
) -> None:
    t = await ps.earning_tenant(api, "10000", webhook_url=rx.url, rate_limit_per_second=10_000)  # $900.00 owed
    key, tid = t["sdk_key"], t["tenant_id"]
    finance, second = await ps.operator(api), await ps.operator(api)

    async def ask(usd: str, acct: str) -> str:
        sent = ps.body(usd, acct)
        resp = seen.keep("request", await api.post("/api/payouts", key=key, json=sent))
        assert resp.status == 201 and resp.body["bank_account"]["account_last4"] == acct[-4:], resp
        again = seen.keep("replay", await api.post("/api/payouts", key=key, json=sent))
        assert again.status == 200 and again.body["duplicate"] is True, again
        return str(resp.body["payout_id"])

    done, rejected, cancelled, returned = [await ask(usd, number) for usd in ("10.00", "8.00", "9.00", "7.00")]
    failed = await ask("11.00", failing)
    behalf_resp = seen.keep(
        "on behalf",
        await ps.as_operator(
            api, finance, "POST", "/admin/payouts", json={**ps.body("6.00", number), "tenant_id": tid}
        ),
    )
    assert behalf_resp.status == 201 and behalf_resp.body["requested_by"] == f"operator:{finance['operator_id']}"
    behalf = behalf_resp.body["payout_id"]

    # Refused requests that carried the number: the refusal does not echo it.
    reused = ps.body("10.00", number)
    assert seen.keep("request", await api.post("/api/payouts", key=key, json=reused)).status == 201
    refused = {
        "IDEMPOTENCY_KEY_REUSED": {**reused, "usd_amount": "10.01"},
        "INVALID_ROUTING_NUMBER": ps.body("1.00", number, routing_number="021000022"),
        "AMOUNT_EXCEEDS_OWED": ps.body("5000.00", number),
        "INVALID_ACCOUNT_NUMBER": ps.body("1.00", f"{number}-"),
    }
    for code, sent in refused.items():
        assert_envelope(seen.keep(code, await api.post("/api/payouts", key=key, json=sent)), 400, code)
    as_number = seen.keep(
        "number as JSON number",
        await api.post("/api/payouts", key=key, json={**ps.body("1.00", number), "account_number": int(number)}),
    )
    assert_envelope(as_number, 400, "INVALID_ACCOUNT_NUMBER")
    assert_envelope(seen.keep("self approval", await ps.approve(api, behalf, finance)), 403, "SELF_APPROVAL_FORBIDDEN")
    ids = [done, rejected, cancelled, returned, failed, behalf]
    leftover = seen.keep("list", await api.get("/api/payouts?status=requested&limit=100", key=key)).body["data"]
    extra = [p["payout_id"] for p in leftover if p["payout_id"] not in ids]
    assert len(extra) == 1, leftover  # the 10.00 whose key was reused: cancelled below

    # Every state: rejected, cancelled, completed, failed, returned.
    rej = seen.keep("reject", await ps.reject(api, rejected, "not the account on the agreement", finance))
    assert rej.status == 200 and rej.body["status"] == "rejected", rej
    for pid in (cancelled, extra[0]):
        c = seen.keep("cancel", await api.post(f"/api/payouts/{pid}/cancel", key=key))
        assert c.status == 200 and c.body["status"] == "cancelled", c
    approvals = await asyncio.gather(
        *(ps.approve(api, pid, finance) for pid in (done, returned, failed)), ps.approve(api, behalf, second)
    )
    for a in approvals:
        assert seen.keep("approve", a).status == 200 and a.body["approvals_received"] == 1, a
    for pid in (done, returned, behalf):
        await ps.reaches(api, t, pid, "completed")
    await ps.reaches(api, t, failed, "failed")
    orders = {
        pid: seen.keep("admin get", await ps.as_operator(api, None, "GET", f"/admin/payouts/{pid}")).body for pid in ids
    }
    await sim.call(
        "POST", "return", json={"payment_order_id": orders[returned]["provider_payment_order_id"], "code": "R03"}
    )
    back = await ps.reaches(api, t, returned, "returned")
    assert (back["return_code"], back["status"]) == ("R03", "returned")
    await ps.revenue_reaches(api, t, owed="884.00", held="0.00", paid_out="16.00", returned="7.00", available="884.00")
    late = seen.keep("cancel late", await api.post(f"/api/payouts/{done}/cancel", key=key))
    assert_envelope(late, 409, "PAYOUT_NOT_CANCELLABLE")

    # Every read: partner and operator, one by one and in lists.
    for pid in [*ids, extra[0]]:
        assert seen.keep("get", await api.get(f"/api/payouts/{pid}", key=key)).status == 200
        assert seen.keep("admin get", await ps.as_operator(api, second, "GET", f"/admin/payouts/{pid}")).status == 200
    for status in ("", *PUBLIC_STATUSES):
        q = f"?limit=100&status={status}" if status else "?limit=100"
        assert seen.keep("list", await api.get(f"/api/payouts{q}", key=key)).status == 200
        listed = seen.keep("admin list", await ps.as_operator(api, None, "GET", f"/admin/payouts{q}&tenant_id={tid}"))
        assert listed.status == 200, listed
    everyone = seen.keep("admin list all", await ps.as_operator(api, None, "GET", "/admin/payouts?limit=100"))
    assert everyone.status == 200, everyone

    # The provider's side: the order it was sent carries the last four only.
    for pid, acct in ((done, number), (returned, number), (failed, failing), (behalf, number)):
        assert await sim.order_last4(orders[pid]["provider_payment_order_id"]) == {acct[-4:]}
    sim_found = texts("sim webhooks", [await sim.call("GET", "webhooks")]) + texts(
        "sim state", [await sim.call("GET", "state")]
    )

    # Every event of the tenant off JetStream, and every webhook delivered with its attempts.
    transitions = 4 + 2 + 2 + 2 + 4 + 5 + 4  # done, rejected, cancelled x2, failed, returned, behalf

    def payout_events(found: Seen) -> list[dict[str, Any]]:
        return [e for e in found.values() if e["event_type"] == "payout.status_changed"]

    events = await read_events(stack, tid, "*", lambda f: len(payout_events(f)) >= transitions, timeout_s=30)
    mine = payout_events(events)
    assert len(mine) == transitions, mine
    expected = {**{pid: number[-4:] for pid in ids}, failed: failing[-4:], extra[0]: number[-4:]}
    assert {e["data"]["payout_id"]: e["data"]["account_last4"] for e in mine} == expected
    wanted = {e["event_id"] for e in mine}

    async def delivered() -> list[dict[str, Any]]:
        got = await list_all(api, "/api/webhooks/deliveries?event_type=payout.status_changed", key=key)
        ok = {d["event_id"] for d in got if d["status"] == "delivered"} >= wanted
        return got if ok and wanted <= {c.event_id for c in rx.answered()} else []

    deliveries = await eventually(delivered, timeout_s=30, interval_s=0.2)
    for d in await list_all(api, "/api/webhooks/deliveries", key=key):
        one = seen.keep("delivery", await api.get(f"/api/webhooks/deliveries/{d['delivery_id']}", key=key))
        assert one.status == 200 and one.body["attempts"], one
    admin_deliveries = seen.keep(
        "admin deliveries", await api.get(f"/admin/webhooks/deliveries?tenant_id={tid}&limit=100", admin=True)
    )
    assert admin_deliveries.status == 200, admin_deliveries
    hooks = [c.body.decode() for c in rx.calls]
    assert {json.loads(h)["event_id"] for h in hooks} >= wanted

    # The last four digits are there; the rest of the number is nowhere.
    shown = [(pid, last4) for _, body in seen.bodies for pid, last4 in shown_last4(body) if pid in expected]
    assert {pid for pid, _ in shown} == set(expected) and len(shown) >= 60, shown
    assert all(last4 == expected[pid] for pid, last4 in shown), shown
    journal = stack.home / "ach_sim" / "state.jsonl"
    everywhere = (
        seen.found()
        + texts("event", events.values())
        + texts("delivery list", deliveries)
        + texts("webhook body", hooks)
        + sim_found
        + [("ach_sim/state.jsonl", journal.read_text())]
        + logs(stack)
        + await database(stack)
    )
    db_last4 = [text for where, text in everywhere if where.endswith("payouts.account_last4")]
    assert db_last4.count(number[-4:]) >= 6 and failing[-4:] in db_last4, db_last4
    assert any(done in text for where, text in everywhere if where == "ach_sim/state.jsonl")  # the search reads it
    assert needles.scan(everywhere) == []


# -- key rotation ----------------------------------------------------------------------------------


async def sealed_rows(stack: Stack, payout_ids: list[str] | None = None) -> dict[str, tuple[str, bytes]]:
    """payout_id -> (account_kid, account_sealed), of the given payouts or of every row."""
    schema = Settings.from_env(stack.env).schema("payouts")
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        rows = await conn.fetch(
            f"SELECT payout_id, account_kid, account_sealed FROM {schema}.payouts"
            " WHERE $1::text[] IS NULL OR payout_id = ANY($1::text[])",
            payout_ids,
        )
    finally:
        await conn.close()
    return {r["payout_id"]: (r["account_kid"], bytes(r["account_sealed"])) for r in rows}


async def restart_payouts(stack: Stack, overrides: dict[str, str]) -> None:
    stack.set_process_env("payouts", overrides)
    await asyncio.to_thread(stack.restart, "payouts")


async def rekey(stack: Stack, keys: str, *, to: str = "k2") -> tuple[int, int]:
    """`python -m services.payouts.rekey` as an operator runs it: (moved, left)."""
    res = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.payouts.rekey"],
        cwd=ROOT,
        env={**stack.env, "INVO_DATA_KEYS": keys},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    match = re.fullmatch(
        rf"re-encrypted (\d+) account numbers under key '{re.escape(to)}'; (\d+) left under other keys",
        res.stdout.strip(),
    )
    assert match, res.stdout
    return int(match[1]), int(match[2])


async def test_a_rotated_key_seals_new_rows_and_old_rows_still_pay_out(api: Api, stack: Stack) -> None:
    old = stack.env["INVO_DATA_KEYS"]
    old_kid, new = Keyring(old).active_kid, Keyring.generate_spec("k2")
    assert old_kid != "k2"
    saved = dict(stack.process_env.get("payouts", {}))
    t = await ps.earning_tenant(api, "1000")  # $90.00 owed
    a, b, c, d = account("1357"), account("2468", prefix="11111111"), account("3579"), account("8642")

    async def ask(usd: str, acct: str) -> str:
        resp = await ps.request(api, t, usd, acct)
        assert resp.status == 201 and resp.body["bank_account"]["account_last4"] == acct[-4:], resp
        return str(resp.body["payout_id"])

    async def approved_order(pid: str, status: str) -> str:
        resp = await ps.approve(api, pid)
        assert resp.status == 200, resp
        await ps.reaches(api, t, pid, status)
        return str((await ps.as_operator(api, None, "GET", f"/admin/payouts/{pid}")).body["provider_payment_order_id"])

    old_a, old_b, old_c = await ask("5.00", a), await ask("4.00", b), await ask("3.00", c)
    before = await sealed_rows(stack, [old_a, old_b, old_c])
    assert {kid for kid, _ in before.values()} == {old_kid}
    try:
        await restart_payouts(stack, {**saved, "INVO_DATA_KEYS": f"{new},{old}"})
        new_d = await ask("2.00", d)
        assert (await sealed_rows(stack, [new_d]))[new_d][0] == "k2"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            sim = Sim(stack, session)
            # Old rows open under the old key: the simulator got the whole number (its fate says so:
            # b's starts 11111111 and fails) with the right last four.
            assert await sim.order_last4(await approved_order(old_a, "completed")) == {a[-4:]}
            assert await sim.order_last4(await approved_order(old_b, "failed")) == {b[-4:]}

            others = [pid for pid, (kid, _) in (await sealed_rows(stack)).items() if kid != "k2"]
            assert {old_a, old_b, old_c} <= set(others)
            assert await rekey(stack, f"{new},{old}") == (len(others), 0)
            after = await sealed_rows(stack)
            assert {kid for kid, _ in after.values()} == {"k2"}, after
            assert all(after[pid][1] != before[pid][1] for pid in before)  # sealed anew
            assert await rekey(stack, f"{new},{old}") == (0, 0)  # nothing left to move
            assert await sealed_rows(stack) == after

            # The old key gone: a row sealed under it before still opens and pays out.
            await restart_payouts(stack, {**saved, "INVO_DATA_KEYS": new})
            assert await sim.order_last4(await approved_order(old_c, "completed")) == {c[-4:]}
            assert await sim.order_last4(await approved_order(new_d, "completed")) == {d[-4:]}
    finally:
        try:  # every row back under the stack's own key, so later tests read them as before
            if await sealed_rows(stack):
                await rekey(stack, f"{old},{new}", to=old_kid)
        finally:
            await restart_payouts(stack, saved)
    assert {kid for kid, _ in (await sealed_rows(stack)).values()} == {old_kid}
    done = await ps.payout(api, t, old_c)
    assert done["bank_account"]["account_last4"] == c[-4:]
    await ps.revenue_reaches(api, t, owed="80.00", held="0.00", paid_out="10.00", available="80.00")
    await ps.check_ledger(api)
