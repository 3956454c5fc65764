"""The operator action log: every admin action is recorded before it runs, with its operator, route,
tenant and idempotency key, then its answer; refusals by role too; reads are not actions; no body
is ever kept; and an action that cannot be recorded does not run."""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from typing import Any

import asyncpg

from devstack.stack import Stack
from services.common.config import Settings
from tests import payouts_support as ps
from tests.helpers import Api, assert_envelope, eventually
from tests.test_operators import as_op, new_operator

LOG = "/admin/operator-actions"


def log_path(**query: str) -> str:
    return f"{LOG}?{urllib.parse.urlencode(query)}"


async def actions(api: Api, **query: str) -> list[dict[str, Any]]:
    resp = await api.get(log_path(**query), admin=True)
    assert resp.status == 200, resp
    return list(resp.body["data"])


def adjust(tenant_id: str, player: str, amount: str, key: str) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "player_email": player,
        "amount": amount,
        "reason": "log test",
        "idempotency_key": key,
    }


async def test_each_action_is_recorded_with_its_operator_and_answer_and_reads_are_not(api: Api) -> None:
    t = await api.create_tenant()
    tid = t["tenant_id"]
    finance, viewer = await new_operator(api, "finance"), await new_operator(api, "viewer")
    player = f"log-{uuid.uuid4().hex[:6]}@example.com"
    k1, k2, k3 = (uuid.uuid4().hex for _ in range(3))
    assert (await as_op(api, finance, "POST", "/admin/players/credit", adjust(tid, player, "10", k1))).status == 200
    refused = await as_op(api, finance, "POST", "/admin/players/debit", adjust(tid, player, "99", k2))
    assert_envelope(refused, 402, "INSUFFICIENT_BALANCE")
    forbidden = await as_op(api, viewer, "POST", "/admin/players/credit", adjust(tid, player, "5", k3))
    assert_envelope(forbidden, 403, "OPERATOR_ROLE_FORBIDDEN")
    assert (await api.patch(f"/admin/tenants/{tid}", admin=True, json={"rate_limit_per_second": 42})).status == 200
    assert (await api.get(f"/admin/tenants/{tid}", admin=True)).status == 200  # a read: not an action
    assert (await api.post("/admin/no-such-route", admin=True, json={})).status == 404  # nothing ran

    logged = await actions(api, tenant_id=tid)
    got = [
        (a["operator_id"], a["method"], a["route"], a["params"], a["idempotency_key"], a["status"], a["error_code"])
        for a in logged
    ]
    # Newest first. The tenant's own creation named no tenant yet: it is in the whole log only.
    assert got == [
        ("op_bootstrap", "PATCH", "/admin/tenants/{tenant_id}", {"tenant_id": tid}, None, 200, None),
        (viewer["operator_id"], "POST", "/admin/players/credit", {}, k3, 403, "OPERATOR_ROLE_FORBIDDEN"),
        (finance["operator_id"], "POST", "/admin/players/debit", {}, k2, 402, "INSUFFICIENT_BALANCE"),
        (finance["operator_id"], "POST", "/admin/players/credit", {}, k1, 200, None),
    ]
    whole = await actions(api, limit="50")
    assert any(a["route"] == "/admin/operators" and a["status"] == 201 for a in whole)
    assert all(a["tenant_id"] == tid and a["finished_at"] and a["request_id"].startswith("req_") for a in logged)
    # One operator's, any role may read it, a page at a time.
    mine = await as_op(api, viewer, "GET", f"{LOG}?operator_id={finance['operator_id']}")
    assert mine.status == 200 and [a["idempotency_key"] for a in mine.body["data"]] == [k2, k1]
    first = await api.get(log_path(tenant_id=tid, limit="2"), admin=True)
    assert first.body["has_more"] is True and len(first.body["data"]) == 2
    rest = await api.get(log_path(tenant_id=tid, cursor=first.body["next_cursor"]), admin=True)
    assert [a["action_id"] for a in first.body["data"] + rest.body["data"]] == [a["action_id"] for a in logged]
    bad = await api.get(log_path(cursor="act_nope"), admin=True)
    assert_envelope(bad, 400, "INVALID_PARAMETER")


async def test_no_body_is_ever_kept(api: Api, stack: Stack) -> None:
    earning = await ps.earning_tenant(api)
    account = "99" + uuid.uuid4().int.__str__()[:10]
    body = {**ps.body("1.00", account), "tenant_id": earning["tenant_id"]}
    assert (await api.post("/admin/payouts", admin=True, json=body)).status in (201, 200)
    schema = Settings.from_env(stack.env).schema("tenants")
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10)
    try:
        rows = await conn.fetch(
            f"SELECT row_to_json(a)::text AS r FROM {schema}.operator_actions a WHERE tenant_id = $1",
            earning["tenant_id"],
        )
    finally:
        await conn.close()
    assert rows and not any(account in r["r"] or "Star Dramas" in r["r"] for r in rows)


async def test_an_action_that_cannot_be_recorded_does_not_run(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = f"norec-{uuid.uuid4().hex[:6]}@example.com"
    key = uuid.uuid4().hex
    await asyncio.to_thread(stack.stop_process, "tenants")
    try:
        resp = await api.post("/admin/players/credit", admin=True, json=adjust(t["tenant_id"], player, "10", key))
        assert_envelope(resp, 503, "SERVICE_UNAVAILABLE")
    finally:
        await asyncio.to_thread(stack.start_process, "tenants")

    # Nothing was credited: the player has no wallet yet (a read through the tenant's own key).
    async def balance() -> Any:
        r = await api.get(f"/api/players/balance?player_email={player}", key=t["sdk_key"])
        return r if r.status == 200 else None

    got = await eventually(balance, timeout_s=15)
    assert got.body["balance"] == "0", got

    # Back: the same action, recorded this time, runs once.
    async def credited() -> bool:
        again = await api.post("/admin/players/credit", admin=True, json=adjust(t["tenant_id"], player, "10", key))
        assert again.status in (200, 503), again
        return again.status == 200

    await eventually(credited, timeout_s=30)
    assert (await api.get(f"/api/players/balance?player_email={player}", key=t["sdk_key"])).body["balance"] == "10"
