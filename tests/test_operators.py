"""Operator identities of the admin API (issue 10, item 6): named operators with roles, the
bootstrap token, credentials stored only as hashes, every admin action recorded with its operator,
and one permission table that every admin route is in."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from devstack.stack import Stack
from services.common import crypto
from services.common.config import Settings
from services.gateway import operators, surfaces
from services.gateway.app import create_app
from services.gateway.backends import Backends
from services.gateway.context import CTX
from tests.helpers import Api, assert_envelope

ROLES = ("viewer", "support", "finance", "admin")


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def new_operator(api: Api, role: str, **kw: Any) -> dict[str, Any]:
    body = {"name": f"{role.title()} Person", "email": f"{role}-{secrets.token_hex(4)}@invo.test", "role": role, **kw}
    resp = await api.post("/admin/operators", admin=True, json=body)
    assert resp.status == 201, resp
    return dict(resp.body)


async def as_op(api: Api, op: dict[str, Any], method: str, path: str, json: Any = None) -> Any:
    return await api.request(method, path, headers=bearer(op["credential"]), json=json)


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        yield conn
    finally:
        await conn.close()


def schema(stack: Stack, service: str) -> str:
    return Settings.from_env(stack.env).schema(service)


# -- creating operators -----------------------------------------------------------------------


async def test_the_bootstrap_token_creates_operators_of_each_role(api: Api) -> None:
    for role in ROLES:
        op = await new_operator(api, role)
        assert op["operator_id"].startswith("op_") and len(op["operator_id"]) == 29
        assert op["role"] == role and op["status"] == "active"
        assert op["credential"].startswith("invo_op_")
        assert op["credential_prefix"] == op["credential"][: len(op["credential_prefix"])]
        assert op["created_by"] == operators.BOOTSTRAP_OPERATOR
        assert op["revoked_at"] is None
        # The credential opens the admin API as that operator.
        assert (await as_op(api, op, "GET", "/admin/ledger/check")).status == 200
    # The listing never shows a credential again.
    listed = await api.get("/admin/operators?limit=500", admin=True)
    assert listed.status == 200, listed
    assert all("credential" not in o for o in listed.body["data"])
    assert op["credential"] not in json.dumps(listed.body)
    assert op["operator_id"] in {o["operator_id"] for o in listed.body["data"]}


async def test_operator_input_is_validated_with_param(api: Api) -> None:
    bad_role = await api.post(
        "/admin/operators", admin=True, json={"name": "X", "email": "x@invo.test", "role": "root"}
    )
    assert_envelope(bad_role, 400, "INVALID_PARAMETER")
    assert bad_role.body["param"] == "role"
    bad_email = await api.post("/admin/operators", admin=True, json={"name": "X", "email": "nope", "role": "viewer"})
    assert_envelope(bad_email, 400, "INVALID_PARAMETER")
    assert bad_email.body["param"] == "email"
    missing = await api.post("/admin/operators", admin=True, json={"name": "X", "role": "viewer"})
    assert_envelope(missing, 400, "MISSING_PARAMETER")
    assert missing.body["param"] == "email"
    extra = await api.post(
        "/admin/operators", admin=True, json={"name": "X", "email": "x@invo.test", "role": "admin", "credential": "x"}
    )
    assert_envelope(extra, 400, "UNKNOWN_FIELD")
    # One active identity per email (emails are case-insensitive); a revoked one frees it.
    first = await new_operator(api, "viewer")
    again = await api.post(
        "/admin/operators", admin=True, json={"name": "Y", "email": first["email"].upper(), "role": "admin"}
    )
    assert_envelope(again, 409, "OPERATOR_EXISTS")
    assert (await api.post(f"/admin/operators/{first['operator_id']}/revoke", admin=True)).status == 200
    assert (await new_operator(api, "admin", email=first["email"]))["role"] == "admin"
    unknown = await api.post("/admin/operators/op_01JD3Q8X4Z6N2R5T7V9W1Y3A5C/revoke", admin=True)
    assert_envelope(unknown, 404, "OPERATOR_NOT_FOUND")


# -- what each role may do --------------------------------------------------------------------


def forbidden(resp: Any, needed: str) -> None:
    assert_envelope(resp, 403, "OPERATOR_ROLE_FORBIDDEN")
    assert resp.body["error"] == "forbidden"
    assert needed in resp.body["message"], resp


def adjustment(tenant_id: str, amount: str = "10") -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "player_email": "player@invo.test",
        "amount": amount,
        "reason": "goodwill",
        "idempotency_key": secrets.token_hex(8),
    }


async def test_a_viewer_reads_and_changes_nothing(api: Api) -> None:
    t = await api.create_tenant()
    tid, key_id = t["tenant_id"], t["sdk_key_id"]
    op = await new_operator(api, "viewer")
    for path in (
        f"/admin/tenants/{tid}",
        f"/admin/tenants/{tid}/keys",
        "/admin/ledger/check",
        f"/admin/webhooks/deliveries?tenant_id={tid}",
    ):
        resp = await as_op(api, op, "GET", path)
        assert resp.status == 200, (path, resp)
    forbidden(await as_op(api, op, "POST", "/admin/tenants", {"name": "V", "currency_name": "V"}), "admin")
    forbidden(await as_op(api, op, "PATCH", f"/admin/tenants/{tid}", {"status": "suspended"}), "admin")
    forbidden(await as_op(api, op, "POST", f"/admin/tenants/{tid}/keys"), "admin")
    forbidden(await as_op(api, op, "POST", f"/admin/tenants/{tid}/keys/{key_id}/rotate", {}), "admin")
    forbidden(await as_op(api, op, "POST", f"/admin/tenants/{tid}/keys/{key_id}/revoke"), "support or admin")
    forbidden(await as_op(api, op, "POST", f"/admin/tenants/{tid}/webhook-secret/rotate", {}), "admin")
    forbidden(
        await as_op(api, op, "POST", "/admin/webhooks/redeliver-failed", {"since": "2024-01-01T00:00:00Z"}), "support"
    )
    forbidden(await as_op(api, op, "POST", "/admin/players/credit", adjustment(tid)), "finance or admin")
    forbidden(await as_op(api, op, "POST", "/admin/players/debit", adjustment(tid)), "finance or admin")
    forbidden(await as_op(api, op, "GET", "/admin/operators"), "admin")
    forbidden(
        await as_op(api, op, "POST", "/admin/operators", {"name": "V", "email": "v@invo.test", "role": "admin"}),
        "admin",
    )
    # Refused before anything ran: the tenant is as it was, its key still works.
    assert (await api.get(f"/admin/tenants/{tid}", admin=True)).body["status"] == "active"
    assert (await api.get("/api/tenant", key=t["sdk_key"])).status == 200


async def test_support_cares_for_integrations_and_moves_no_money(api: Api) -> None:
    t = await api.create_tenant()
    tid, key_id = t["tenant_id"], t["sdk_key_id"]
    op = await new_operator(api, "support")
    assert (await as_op(api, op, "GET", f"/admin/tenants/{tid}")).status == 200
    redelivered = await as_op(
        api, op, "POST", "/admin/webhooks/redeliver-failed", {"since": "2024-01-01T00:00:00Z", "tenant_id": tid}
    )
    assert redelivered.status == 200 and redelivered.body == {"redelivered": 0}, redelivered
    # Nothing that answers a secret: a new key or signing secret would let support act as the tenant.
    forbidden(await as_op(api, op, "POST", f"/admin/tenants/{tid}/keys"), "admin")
    forbidden(await as_op(api, op, "POST", f"/admin/tenants/{tid}/keys/{key_id}/rotate", {}), "admin")
    forbidden(await as_op(api, op, "POST", f"/admin/tenants/{tid}/webhook-secret/rotate", {}), "admin")
    issued = await api.post(f"/admin/tenants/{tid}/keys", admin=True)
    assert issued.status == 201, issued
    revoked = await as_op(api, op, "POST", f"/admin/tenants/{tid}/keys/{issued.body['key_id']}/revoke")
    assert revoked.status == 200, revoked
    forbidden(await as_op(api, op, "POST", "/admin/players/credit", adjustment(tid)), "finance or admin")
    forbidden(await as_op(api, op, "POST", "/admin/players/debit", adjustment(tid)), "finance or admin")
    forbidden(await as_op(api, op, "PATCH", f"/admin/tenants/{tid}", {"name": "Renamed"}), "admin")
    forbidden(await as_op(api, op, "POST", "/admin/tenants", {"name": "S", "currency_name": "S"}), "admin")
    forbidden(
        await as_op(api, op, "POST", "/admin/operators", {"name": "S", "email": "s@invo.test", "role": "admin"}),
        "admin",
    )


async def test_finance_moves_money_and_nothing_else(api: Api) -> None:
    t = await api.create_tenant()
    tid, key_id = t["tenant_id"], t["sdk_key_id"]
    op = await new_operator(api, "finance")
    credit = await as_op(api, op, "POST", "/admin/players/credit", adjustment(tid, "25"))
    assert credit.status == 200 and credit.body["new_balance"] == "25", credit
    debit = await as_op(api, op, "POST", "/admin/players/debit", adjustment(tid, "5"))
    assert debit.status == 200 and debit.body["new_balance"] == "20", debit
    assert (await as_op(api, op, "GET", "/admin/ledger/check")).status == 200
    forbidden(await as_op(api, op, "POST", f"/admin/tenants/{tid}/keys/{key_id}/rotate", {}), "admin")
    forbidden(await as_op(api, op, "POST", f"/admin/tenants/{tid}/keys/{key_id}/revoke"), "support or admin")
    forbidden(await as_op(api, op, "POST", f"/admin/tenants/{tid}/webhook-secret/rotate", {}), "admin")
    forbidden(
        await as_op(api, op, "POST", "/admin/webhooks/redeliver-failed", {"since": "2024-01-01T00:00:00Z"}), "support"
    )
    forbidden(await as_op(api, op, "PATCH", f"/admin/tenants/{tid}", {"name": "Renamed"}), "admin")
    forbidden(await as_op(api, op, "POST", "/admin/tenants", {"name": "F", "currency_name": "F"}), "admin")
    forbidden(await as_op(api, op, "GET", "/admin/operators"), "admin")


async def test_an_admin_does_everything_and_manages_operators(api: Api) -> None:
    op = await new_operator(api, "admin")
    created = await as_op(api, op, "POST", "/admin/tenants", {"name": "By Admin", "currency_name": "Admin Coins"})
    assert created.status == 201, created
    tid = created.body["tenant_id"]
    patched = await as_op(api, op, "PATCH", f"/admin/tenants/{tid}", {"name": "Renamed"})
    assert patched.status == 200 and patched.body["name"] == "Renamed", patched
    credit = await as_op(api, op, "POST", "/admin/players/credit", adjustment(tid))
    assert credit.status == 200, credit
    rotated = await as_op(api, op, "POST", f"/admin/tenants/{tid}/webhook-secret/rotate", {})
    assert rotated.status == 201, rotated
    # A named admin creates operators, and is recorded as their creator.
    viewer = await as_op(api, op, "POST", "/admin/operators", {"name": "V", "email": "v@invo.test", "role": "viewer"})
    assert viewer.status == 201 and viewer.body["created_by"] == op["operator_id"], viewer
    listed = await as_op(api, op, "GET", "/admin/operators?status=active&limit=500")
    assert listed.status == 200 and viewer.body["operator_id"] in {o["operator_id"] for o in listed.body["data"]}
    revoked = await as_op(api, op, "POST", f"/admin/operators/{viewer.body['operator_id']}/revoke")
    assert revoked.status == 200 and revoked.body["status"] == "revoked", revoked
    assert revoked.body["revoked_by"] == op["operator_id"]


async def test_the_listing_pages(api: Api) -> None:
    made = [await new_operator(api, "viewer") for _ in range(3)]
    seen: list[str] = []
    cursor = made[0]["operator_id"]
    while True:
        page = await api.get(f"/admin/operators?limit=1&cursor={cursor}", admin=True)
        assert page.status == 200 and len(page.body["data"]) <= 1, page
        seen += [o["operator_id"] for o in page.body["data"]]
        if not page.body["has_more"]:
            break
        cursor = page.body["next_cursor"]
    assert [m["operator_id"] for m in made[1:]] == [s for s in seen if s in {m["operator_id"] for m in made}]
    assert_envelope(await api.get("/admin/operators?limit=0", admin=True), 400, "INVALID_PARAMETER")
    assert_envelope(await api.get("/admin/operators?status=gone", admin=True), 400, "INVALID_PARAMETER")


# -- credentials ------------------------------------------------------------------------------


async def test_a_revoked_credential_is_refused_at_once(api: Api) -> None:
    op = await new_operator(api, "admin")
    assert (await as_op(api, op, "GET", "/admin/ledger/check")).status == 200  # now cached
    assert (await api.post(f"/admin/operators/{op['operator_id']}/revoke", admin=True)).status == 200
    assert_envelope(await as_op(api, op, "GET", "/admin/ledger/check"), 401, "ADMIN_TOKEN_REVOKED")
    # Revoking again keeps the first revocation as it was.
    again = await api.post(f"/admin/operators/{op['operator_id']}/revoke", admin=True)
    assert again.status == 200 and again.body["revoked_by"] == operators.BOOTSTRAP_OPERATOR


async def test_unknown_credentials_and_sdk_keys_never_open_admin(api: Api) -> None:
    t = await api.create_tenant()
    op = await new_operator(api, "viewer")
    tampered = op["credential"][:-1] + ("A" if op["credential"][-1] != "A" else "B")
    for token in (tampered, "invo_op_" + "x" * 43, "invo_op_" + "y" * 200, t["sdk_key"], "op_bootstrap"):
        assert_envelope(await api.get("/admin/ledger/check", headers=bearer(token)), 401, "INVALID_ADMIN_TOKEN")
    # An SDK key in its own header is no admin credential at all.
    assert_envelope(await api.get("/admin/ledger/check", key=t["sdk_key"]), 401, "MISSING_ADMIN_TOKEN")
    # And an operator credential is no SDK key.
    assert_envelope(await api.get("/api/tenant", key=op["credential"]), 401, "INVALID_API_KEY")


async def test_the_credential_is_stored_only_as_a_keyed_hash(api: Api, stack: Stack, db: asyncpg.Connection) -> None:
    op = await new_operator(api, "support")
    row = await db.fetchrow(
        f'SELECT * FROM "{schema(stack, "tenants")}".operators WHERE operator_id = $1', op["operator_id"]
    )
    assert row is not None
    for column, value in row.items():
        text = bytes(value).hex() if isinstance(value, bytes) else str(value)
        assert op["credential"] not in text, column
        if isinstance(value, bytes):
            assert op["credential"].encode() not in value, column
    assert bytes(row["credential_hash"]) == crypto.keyed_hash(stack.env["INVO_KEY_PEPPER"], op["credential"])


# -- who did it -------------------------------------------------------------------------------


async def test_every_admin_action_records_its_operator(api: Api, stack: Stack, db: asyncpg.Connection) -> None:
    op = await new_operator(api, "admin")
    finance = await new_operator(api, "finance")
    created = await as_op(api, op, "POST", "/admin/tenants", {"name": "Audited", "currency_name": "Audit Coins"})
    assert created.status == 201, created
    tid = created.body["tenant_id"]
    assert (await as_op(api, op, "PATCH", f"/admin/tenants/{tid}", {"name": "Audited 2"})).status == 200
    boot = await api.post(f"/admin/tenants/{tid}/webhook-secret/rotate", admin=True, json={})
    assert boot.status == 201, boot
    rows = await db.fetch(
        f'SELECT action, operator_id, request_id FROM "{schema(stack, "tenants")}".audit_log'
        " WHERE tenant_id = $1 ORDER BY id",
        tid,
    )
    by_action = {r["action"]: r for r in rows}
    assert by_action["tenant.created"]["operator_id"] == op["operator_id"]
    assert by_action["key.issued"]["operator_id"] == op["operator_id"]
    assert by_action["tenant.updated"]["operator_id"] == op["operator_id"]
    assert by_action["webhook_secret.rotated"]["operator_id"] == operators.BOOTSTRAP_OPERATOR
    assert by_action["tenant.created"]["request_id"] == created.headers["X-Request-Id"]
    # The ledger keeps the operator of a manual adjustment in the transaction's metadata.
    credit = await as_op(api, finance, "POST", "/admin/players/credit", adjustment(tid))
    assert credit.status == 200, credit
    metadata = await db.fetchval(
        f'SELECT metadata FROM "{schema(stack, "ledger")}".transactions WHERE id = $1', credit.body["transaction_id"]
    )
    assert json.loads(metadata)["operator_id"] == finance["operator_id"]


async def test_two_tenants_are_unaffected_by_each_others_operator_actions(api: Api) -> None:
    a = await api.create_tenant(name="A")
    b = await api.create_tenant(name="B")
    support = await new_operator(api, "support")
    finance = await new_operator(api, "finance")
    revoked = await as_op(api, support, "POST", f"/admin/tenants/{a['tenant_id']}/keys/{a['sdk_key_id']}/revoke")
    assert revoked.status == 200, revoked
    credited = await as_op(api, finance, "POST", "/admin/players/credit", adjustment(a["tenant_id"], "7"))
    assert credited.status == 200, credited
    assert_envelope(await api.get("/api/tenant", key=a["sdk_key"]), 401, "API_KEY_REVOKED")
    assert (await api.get("/api/tenant", key=b["sdk_key"])).status == 200
    balance = await api.get("/api/players/balance?player_email=player@invo.test", key=b["sdk_key"])
    assert balance.status == 200 and balance.body["balance"] == "0", balance


# -- the one permission table ----------------------------------------------------------------


async def test_every_admin_route_is_in_the_permission_table(stack: Stack) -> None:
    settings = Settings.from_env(stack.env)
    app = create_app(settings, Backends(settings))
    try:
        routed = {(method, path) for path, method in surfaces.routes(app) if path.startswith("/admin/")}
    finally:
        await app[CTX].backends.close()
    assert routed, "no admin routes found"
    missing = routed - set(operators.PERMISSIONS)
    assert not missing, f"admin routes without a role in operators.PERMISSIONS: {sorted(missing)}"
    stale = set(operators.PERMISSIONS) - routed
    assert not stale, f"operators.PERMISSIONS lists routes that do not exist: {sorted(stale)}"
    assert set().union(*operators.PERMISSIONS.values()) <= set(ROLES)


def test_a_route_missing_from_the_table_needs_admin() -> None:
    assert operators.roles_for("POST", "/admin/refunds/{refund_id}/approve") == {"admin"}
    assert operators.roles_for("DELETE", "/admin/tenants/{tenant_id}") == {"admin"}
    assert operators.roles_for("HEAD", "/admin/ledger/check") == operators.roles_for("GET", "/admin/ledger/check")
