"""What the payout tests share: a tenant with owed revenue, payout bodies with bank details of the
ACH simulator's magic numbers, operators, the review calls, waiting on a payout's status, and the
payout.status_changed events.

The simulator (devstack/ach_sim) decides an order's fate by its account number, as Modern
Treasury's sandbox does: `123456789` completes, `111111110` fails after processing, `10001` and
`10003` complete and are then returned (R01, R03).
"""

from __future__ import annotations

import uuid
from typing import Any

from devstack.stack import Stack
from tests.helpers import Api, Response, eventually
from tests.stream_support import Seen, read_events

COMPLETES, FAILS, RETURNS_R01, RETURNS_R03 = "123456789", "111111110", "10001", "10003"
ROUTING = "021000021"  # a valid ABA checksum


def key() -> str:
    return f"payout-{uuid.uuid4().hex}"


async def earning_tenant(api: Api, units: str = "1000", **settings: Any) -> dict[str, Any]:
    """A new tenant whose revenue is 90% of `units` (one item purchase at the default 10% fee)."""
    t = await api.create_tenant(name="Payout Partner", currency_name="Stars", **settings)
    player = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
    assert (await api.credit(t["tenant_id"], player, units)).status == 200
    bought = await api.post(
        "/api/item-purchases/purchase-item",
        key=t["sdk_key"],
        json={"player_email": player, "item_id": "pack", "item_name": "Pack", "price": units, "idempotency_key": key()},
    )
    assert bought.status == 200, bought
    return t


def body(usd: str, account: str = COMPLETES, **extra: Any) -> dict[str, Any]:
    return {
        "usd_amount": usd,
        "contact_email": "finance@partner.example",
        "account_holder_name": "Star Dramas Inc.",
        "routing_number": ROUTING,
        "account_number": account,
        "account_type": "checking",
        "idempotency_key": key(),
        **extra,
    }


async def request(api: Api, t: dict[str, Any], usd: str, account: str = COMPLETES, **extra: Any) -> Response:
    return await api.post("/api/payouts", key=t["sdk_key"], json=body(usd, account, **extra))


async def revenue(api: Api, t: dict[str, Any]) -> dict[str, Any]:
    resp = await api.get("/api/revenue", key=t["sdk_key"])
    assert resp.status == 200, resp
    return dict(resp.body)


async def revenue_reaches(api: Api, t: dict[str, Any], **usd: str) -> dict[str, Any]:
    """GET /api/revenue once the named figures (`owed="65.00"`, `paid_out=...`: their `_usd`
    fields) are these; the last answer read. Awaited, not read once: a payout's ledger write follows
    the commit of its status by moments (services/payouts/moves.py), so right after a status is
    seen the figures may still be the old ones."""
    last: dict[str, Any] = {}

    async def matches() -> bool:
        last.update(await revenue(api, t))
        return {k: last[f"{k}_usd"] for k in usd} == usd

    await eventually(matches, timeout_s=10, describe=lambda: last)
    return last


async def operator(api: Api, role: str = "finance") -> dict[str, Any]:
    """A named operator and its credential (as the `Authorization: Bearer` value)."""
    resp = await api.post(
        "/admin/operators",
        admin=True,
        json={"name": f"{role} {uuid.uuid4().hex[:6]}", "email": f"{uuid.uuid4().hex[:10]}@invo.example", "role": role},
    )
    assert resp.status == 201, resp
    return dict(resp.body)


async def as_operator(api: Api, op: dict[str, Any] | None, method: str, path: str, **kw: Any) -> Response:
    """An admin call with an operator's credential (None: the bootstrap token)."""
    if op is None:
        return await api.request(method, path, admin=True, **kw)
    return await api.request(method, path, headers={"Authorization": f"Bearer {op['credential']}"}, **kw)


async def approve(api: Api, payout_id: str, op: dict[str, Any] | None = None) -> Response:
    return await as_operator(api, op, "POST", f"/admin/payouts/{payout_id}/approve")


async def reject(api: Api, payout_id: str, reason: str, op: dict[str, Any] | None = None) -> Response:
    return await as_operator(api, op, "POST", f"/admin/payouts/{payout_id}/reject", json={"reason": reason})


async def payout(api: Api, t: dict[str, Any], payout_id: str) -> dict[str, Any]:
    resp = await api.get(f"/api/payouts/{payout_id}", key=t["sdk_key"])
    assert resp.status == 200, resp
    return dict(resp.body)


async def reaches(api: Api, t: dict[str, Any], payout_id: str, status: str, timeout_s: float = 20) -> dict[str, Any]:
    async def done() -> dict[str, Any]:
        p = await payout(api, t, payout_id)
        return p if p["status"] == status else {}

    return await eventually(done, timeout_s=timeout_s, interval_s=0.1)


async def check_ledger(api: Api) -> None:
    resp = await api.get("/admin/ledger/check", admin=True)
    assert resp.status == 200 and resp.body["ok"] is True, resp


async def status_events(stack: Stack, tenant_id: str, payout_id: str, count: int) -> list[dict[str, Any]]:
    """The payout's payout.status_changed events, once there are `count`, in stream order."""

    def mine(found: Seen) -> list[dict[str, Any]]:
        return [e for _, e in sorted(found.items()) if e["data"].get("payout_id") == payout_id]

    return mine(await read_events(stack, tenant_id, "payout", lambda f: len(mine(f)) >= count))
