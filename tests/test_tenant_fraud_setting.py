"""The per-tenant `auto_refund_fraud_warnings` setting (issue 13): off unless an admin turns it on,
carried from the admin API to the tenants service's GetTenant, where the payments service reads it
before refunding an actionable early fraud warning at once."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from invo.v1 import tenants_pb2, tenants_pb2_grpc

from devstack.stack import Stack
from services.common import grpcutil
from services.common.config import Settings
from tests.helpers import Api, assert_envelope

FIELD = "auto_refund_fraud_warnings"


async def new_operator(api: Api, role: str) -> dict[str, Any]:
    body = {"name": f"{role.title()} Person", "email": f"{role}-{secrets.token_hex(4)}@invo.test", "role": role}
    resp = await api.post("/admin/operators", admin=True, json=body)
    assert resp.status == 201, resp
    return dict(resp.body)


async def patch_as(api: Api, op: dict[str, Any], tenant_id: str, body: Any) -> Any:
    return await api.patch(
        f"/admin/tenants/{tenant_id}", headers={"Authorization": f"Bearer {op['credential']}"}, json=body
    )


async def setting(api: Api, tenant_id: str) -> Any:
    resp = await api.get(f"/admin/tenants/{tenant_id}", admin=True)
    assert resp.status == 200, resp
    return resp.body[FIELD]


async def grpc_tenant(stack: Stack, tenant_id: str) -> tenants_pb2.Tenant:
    ch = grpcutil.channel(stack.env["INVO_TENANTS_ADDR"])
    try:
        stub = tenants_pb2_grpc.TenantsServiceStub(ch)
        got: tenants_pb2.Tenant = await grpcutil.call(
            stub.GetTenant, tenants_pb2.GetTenantRequest(tenant_id=tenant_id), timeout_s=5
        )
        return got
    finally:
        await ch.close()


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_new_tenant_has_it_off_everywhere_it_is_shown(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    assert t["tenant"][FIELD] is False
    assert await setting(api, t["tenant_id"]) is False
    own = await api.get("/api/tenant", key=t["sdk_key"])
    assert own.status == 200 and own.body[FIELD] is False, own
    assert (await grpc_tenant(stack, t["tenant_id"])).auto_refund_fraud_warnings is False


async def test_it_can_be_set_at_creation(api: Api, stack: Stack) -> None:
    t = await api.create_tenant(**{FIELD: True})
    assert t["tenant"][FIELD] is True
    assert (await grpc_tenant(stack, t["tenant_id"])).auto_refund_fraud_warnings is True


async def test_patch_turns_it_on_and_off_and_other_fields_leave_it(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    tid = t["tenant_id"]
    on = await api.patch(f"/admin/tenants/{tid}", admin=True, json={FIELD: True})
    assert on.status == 200 and on.body[FIELD] is True, on
    assert await setting(api, tid) is True
    # The partner sees its own settings, this one too (the gateway forgets the tenant it cached).
    own = await api.get("/api/tenant", key=t["sdk_key"])
    assert own.status == 200 and own.body[FIELD] is True, own
    # Where the payments service will read it.
    assert (await grpc_tenant(stack, tid)).auto_refund_fraud_warnings is True

    other = await api.patch(
        f"/admin/tenants/{tid}", admin=True, json={"name": "Renamed", "allows_outgoing_transfers": False}
    )
    assert other.status == 200 and other.body["name"] == "Renamed", other
    assert other.body[FIELD] is True
    # null, like the other booleans here, leaves the setting as it is.
    unchanged = await api.patch(f"/admin/tenants/{tid}", admin=True, json={FIELD: None})
    assert unchanged.status == 200 and unchanged.body[FIELD] is True, unchanged

    off = await api.patch(f"/admin/tenants/{tid}", admin=True, json={FIELD: False})
    assert off.status == 200 and off.body[FIELD] is False, off
    assert (await grpc_tenant(stack, tid)).auto_refund_fraud_warnings is False


@pytest.mark.parametrize("value", ["true", "false", 1, 0, "yes", [], {}, 1.0])
async def test_a_non_boolean_is_refused_and_changes_nothing(api: Api, value: Any) -> None:
    t = await api.create_tenant()
    tid = t["tenant_id"]
    before = (await api.get(f"/admin/tenants/{tid}", admin=True)).body
    resp = await api.patch(f"/admin/tenants/{tid}", admin=True, json={FIELD: value, "name": "Should Not Apply"})
    assert_envelope(resp, 400, "INVALID_PARAMETER")
    assert resp.body.get("param") == FIELD, resp
    assert (await api.get(f"/admin/tenants/{tid}", admin=True)).body == before
    created = await api.post("/admin/tenants", admin=True, json={"name": "X", "currency_name": "Y", FIELD: value})
    assert_envelope(created, 400, "INVALID_PARAMETER")
    assert created.body.get("param") == FIELD, created


async def test_only_an_admin_may_change_it(api: Api) -> None:
    t = await api.create_tenant()
    tid = t["tenant_id"]
    for role in ("viewer", "support", "finance"):
        op = await new_operator(api, role)
        resp = await patch_as(api, op, tid, {FIELD: True})
        assert_envelope(resp, 403, "OPERATOR_ROLE_FORBIDDEN")
        assert await setting(api, tid) is False
    admin = await new_operator(api, "admin")
    resp = await patch_as(api, admin, tid, {FIELD: True})
    assert resp.status == 200 and resp.body[FIELD] is True, resp


async def test_the_change_is_audited_with_its_operator(api: Api, stack: Stack, db: asyncpg.Connection) -> None:
    t = await api.create_tenant()
    tid = t["tenant_id"]
    admin = await new_operator(api, "admin")
    assert (await patch_as(api, admin, tid, {FIELD: True})).status == 200
    schema = Settings.from_env(stack.env).schema("tenants")
    rows = await db.fetch(
        f'SELECT detail, operator_id FROM "{schema}".audit_log'
        " WHERE tenant_id = $1 AND action = 'tenant.updated' ORDER BY id",
        tid,
    )
    assert [(json.loads(r["detail"]), r["operator_id"]) for r in rows] == [({FIELD: True}, admin["operator_id"])]
