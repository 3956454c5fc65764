"""The world the hostile-input tests run against (tests/test_hostile_input.py): a tenant with a
key, a player with a balance, and one of everything a route's path can name (another tenant, a
paid order, an open checkout session, a waiting payout and transfer), and the snapshot of what a
refused request must leave as it was.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from typing import Any

from devstack.stack import Stack
from services.gateway import app as _app  # noqa: F401  (registers every route's declaration)
from services.gateway import document
from tests import hostile_support as hs
from tests.helpers import Api

DOC = document.document("http://hostile.invalid")
SDK_HEADER = "X-Game-Secret-Key"


@dataclasses.dataclass
class World:
    base_url: str
    admin_token: str
    sdk_key: str
    tenant_id: str
    email: str
    path_params: dict[str, str]
    checkout_token: str  # an open checkout session's, for the page API (/checkout/api)

    def auth(self, op: hs.Operation) -> list[hs.Header]:
        if op.security == "GameSecretKey":
            return [(SDK_HEADER, self.sdk_key)]
        if op.security == "OperatorBearer":
            return [("Authorization", f"Bearer {self.admin_token}")]
        if op.security == "CheckoutSession":
            return [("Authorization", f"Bearer {self.checkout_token}")]
        return []

    def body(self, op: hs.Operation) -> dict[str, Any]:
        assert op.body is not None
        return hs.valid_body(op.body, DOC, hs.fills(self.email, self.tenant_id, self.path_params))

    async def send(
        self,
        op: hs.Operation,
        source: str,
        *,
        target: str | bytes | None = None,
        headers: Sequence[hs.Header] | None = None,
        body: bytes | None = None,
    ) -> hs.RawResponse:
        """The operation, with this world's credential and a valid body unless told otherwise."""
        if body is None and op.body is not None:
            body = json.dumps(self.body(op)).encode()
        if body is None and op.method in ("POST", "PATCH"):
            body = b""
        request = hs.build(
            op.method,
            target if target is not None else hs.target(op, self.path_params),
            self.auth(op) if headers is None else headers,
            body,
        )
        return await hs.send(self.base_url, request, source=source)


async def make_world(stack: Stack) -> World:
    async with Api(stack.gateway_url, admin_token=stack.env["INVO_ADMIN_TOKEN"]) as api:
        served = (await api.get("/openapi.json")).body
        # The cases follow the document the gateway serves, route for route.
        assert {(p, m) for p, ops in served["paths"].items() for m in ops} == {
            (p, m) for p, ops in DOC["paths"].items() for m in ops
        }
        mine = await api.create_tenant(rate_limit_per_second=100000, webhook_url=hs.SAFE_WEBHOOK_URL)
        # Admin routes with a tenant in the path work on another tenant: nothing they could do
        # (rotate, revoke) may close /api mid-module.
        target = await api.create_tenant(rate_limit_per_second=100000, webhook_url=hs.SAFE_WEBHOOK_URL)
        email = f"hostile-{uuid.uuid4().hex[:8]}@example.com"
        assert (await api.credit(mine["tenant_id"], email, "1000")).status == 200
        test = await api.post("/api/webhooks/test", key=mine["sdk_key"])
        assert test.status == 201, test
        session = await api.post(
            "/api/checkout/sessions",
            key=mine["sdk_key"],
            json={
                "player_email": email,
                "usd_amount": "10.00",
                "success_url": "https://yourgame.example/ok",
                "cancel_url": "https://yourgame.example/no",
            },
        )
        assert session.status == 201, session
        paid = await api.post(
            "/api/currency-purchases/purchase-currency",
            key=mine["sdk_key"],
            json={
                "player_email": email,
                "usd_amount": "20.00",
                "payment_method_id": "pm_card_visa",
                "purchase_reference": f"hostile-{uuid.uuid4().hex}",
            },
        )
        assert paid.status == 200 and paid.body["status"] == "success", paid
        # A transfer waiting for its PIN: verify, resend and cancel reach a real one.
        transfer = await api.post(
            "/api/transfers/initiate-transfer",
            key=mine["sdk_key"],
            json={
                "player_email": email,
                "destination_tenant_id": target["tenant_id"],
                "amount": "1",
                "sender_phone": hs.phone(),
                "idempotency_key": f"hostile-{uuid.uuid4().hex}",
            },
        )
        assert transfer.status == 201, transfer
        # Revenue to ask payouts of: a valid payout request (a control) must go through.
        bought = await api.post(
            "/api/item-purchases/purchase-item",
            key=mine["sdk_key"],
            json={
                "player_email": email,
                "item_id": "hostile",
                "item_name": "Hostile",
                "price": "500",
                "idempotency_key": f"hostile-{uuid.uuid4().hex}",
            },
        )
        assert bought.status == 200, bought
        # A payout waiting for review: cancel, approve and reject reach a real one.
        payout = await api.post(
            "/api/payouts",
            key=mine["sdk_key"],
            json={
                "usd_amount": "1.00",
                "contact_email": "hostile@example.com",
                "account_holder_name": "Hostile Inc.",
                "routing_number": "021000021",
                "account_number": "123456789",
                "account_type": "checking",
                "idempotency_key": f"hostile-{uuid.uuid4().hex}",
            },
        )
        assert payout.status == 201, payout
        return World(
            base_url=stack.gateway_url,
            admin_token=stack.env["INVO_ADMIN_TOKEN"],
            sdk_key=mine["sdk_key"],
            tenant_id=mine["tenant_id"],
            email=email,
            path_params={
                "tenant_id": target["tenant_id"],
                "key_id": target["sdk_key_id"],
                "delivery_id": test.body["delivery_id"],
                "session_id": session.body["session_id"],
                "order_id": paid.body["order_id"],
                "card_id": "pm_card_visa",
                "name": "checkout.js",
                "transfer_id": transfer.body["transfer_id"],
                "payout_id": payout.body["payout_id"],
            },
            checkout_token=session.body["checkout_url"].partition("session=")[2],
        )


async def snapshot(api: Api, w: World) -> dict[str, Any]:
    """What a refused request must leave as it was."""
    target = w.path_params["tenant_id"]
    key = w.sdk_key
    entries = await api.get("/api/ledger/entries?limit=1000", key=key)
    deliveries = await api.get("/api/webhooks/deliveries?limit=100", key=key)
    operators = await api.get("/admin/operators?limit=500", admin=True)
    check = await api.get("/admin/ledger/check", admin=True)
    return {
        "balance": (await api.get(f"/api/players/balance?player_email={w.email}", key=key)).body,
        "tenant": (await api.get("/api/tenant", key=key)).body,
        "target": (await api.get(f"/admin/tenants/{target}", admin=True)).body,
        "target_keys": (await api.get(f"/admin/tenants/{target}/keys", admin=True)).body,
        "entries": [e["entry_id"] for e in entries.body["data"]],
        # Test deliveries only: those of money events arrive after them, a refused request caused none
        # (the balance and the entries say so).
        "deliveries": sorted(d["delivery_id"] for d in deliveries.body["data"] if d["event_type"] == "webhook.test"),
        "operators": sorted(o["operator_id"] for o in operators.body["data"]),
        "ledger_ok": check.body["ok"],
        # The page API's session: a refused call neither paid nor cancelled it.
        "checkout": (await api.get(f"/api/checkout/sessions/{w.path_params['session_id']}", key=key)).body["status"],
        # The paid order: a refused refund refunded nothing.
        "refunds": len((await api.get(f"/admin/orders/{w.path_params['order_id']}", admin=True)).body["refunds"]),
        # Payouts: a refused request asked for none, and left the waiting one waiting.
        "payout": (await api.get(f"/api/payouts/{w.path_params['payout_id']}", key=key)).body["status"],
        "payouts": [p["payout_id"] for p in (await api.get("/api/payouts?limit=100", key=key)).body["data"]],
        # The waiting transfer: a refused call neither verified, resent, cancelled nor counted a try.
        "transfer": {
            k: v
            for k, v in (await api.get(f"/api/transfers/{w.path_params['transfer_id']}", key=key)).body.items()
            if k in ("status", "pin_attempts_remaining", "pin_sends_remaining", "updated_at")
        },
    }
