"""Every service answers the standard health check, lists itself by reflection, and enforces
deadlines; errors cross the gRPC hop with their exact codes."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from invo.v1 import tenants_pb2, tenants_pb2_grpc

from devstack.stack import Stack
from services.common import errors, grpcutil
from services.common.config import SERVICES
from tests.helpers import Api


# One event loop for the six cases: grpc.aio delivers a closed channel's last completions (here a
# reflection stream's) on the loop that opened it, and with a loop per case such a completion could
# land after that loop closed ("PollerCompletionQueue._handle_events: Event loop is closed", seen
# once in CI).
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("service", SERVICES)
async def test_health_and_reflection(stack: Stack, service: str) -> None:
    addr = stack.env[f"INVO_{service.upper()}_ADDR"]
    async with grpc.aio.insecure_channel(addr) as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names: set[str] = set()
        async for resp in stub.ServerReflectionInfo(iter([request]), timeout=5):
            names |= {s.name for s in resp.list_services_response.service}
    assert "grpc.health.v1.Health" in names
    assert "grpc.reflection.v1alpha.ServerReflection" in names
    if service == "tenants":
        assert "invo.v1.TenantsService" in names
        async with grpc.aio.insecure_channel(addr) as ch:
            check = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="invo.v1.TenantsService"), timeout=5
            )
        assert check.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_call_without_deadline_is_refused_by_the_server(stack: Stack) -> None:
    # A bare channel, without our client interceptor, to show the server enforces it too.
    async with grpc.aio.insecure_channel(stack.env["INVO_TENANTS_ADDR"]) as ch:
        stub = tenants_pb2_grpc.TenantsServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetTenant(tenants_pb2.GetTenantRequest(tenant_id="tn_x"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(info.value.trailing_metadata() or ())[errors.MD_ERROR_CODE] == "DEADLINE_REQUIRED"


async def test_a_call_without_timeout_never_leaves_the_client(stack: Stack) -> None:
    ch = grpcutil.channel(stack.env["INVO_TENANTS_ADDR"])
    try:
        stub = tenants_pb2_grpc.TenantsServiceStub(ch)
        with pytest.raises(ValueError, match="without a timeout"):
            await stub.GetTenant(tenants_pb2.GetTenantRequest(tenant_id="tn_x"))
    finally:
        await ch.close()


async def test_errors_keep_their_codes_across_the_hop(stack: Stack) -> None:
    ch = grpcutil.channel(stack.env["INVO_TENANTS_ADDR"])
    try:
        stub = tenants_pb2_grpc.TenantsServiceStub(ch)
        with pytest.raises(errors.NotFound) as nf:
            await grpcutil.call(stub.GetTenant, tenants_pb2.GetTenantRequest(tenant_id="tn_nope"), timeout_s=5)
        assert (nf.value.error_code, nf.value.http_status) == ("TENANT_NOT_FOUND", 404)
        with pytest.raises(errors.Unauthenticated) as ua:
            await grpcutil.call(stub.AuthenticateKey, tenants_pb2.AuthenticateKeyRequest(sdk_key="x"), timeout_s=5)
        assert ua.value.error_code == "INVALID_API_KEY"
        with pytest.raises(errors.InvalidRequest) as bad:
            await grpcutil.call(stub.CreateTenant, tenants_pb2.CreateTenantRequest(environment="staging"), timeout_s=5)
        assert bad.value.error_code == "INVALID_REQUEST"
        assert "environment" in bad.value.message
    finally:
        await ch.close()


async def test_an_unreachable_service_is_unavailable_without_leaking_addresses() -> None:
    from devstack.devservers import free_port

    ch = grpcutil.channel(f"127.0.0.1:{free_port()}")
    try:
        stub = tenants_pb2_grpc.TenantsServiceStub(ch)
        with pytest.raises(errors.Unavailable) as info:
            await grpcutil.call(stub.GetTenant, tenants_pb2.GetTenantRequest(tenant_id="tn_x"), timeout_s=2)
        assert "127.0.0.1" not in info.value.message
    finally:
        await ch.close()


async def test_webhook_targets_come_in_one_call_and_secrets_only_when_asked(stack: Stack, api: Api) -> None:
    a = await api.create_tenant(webhook_url="https://a.example.com/hook")
    b = await api.create_tenant()  # no webhook URL
    rotated = await api.post(
        f"/admin/tenants/{a['tenant_id']}/webhook-secret/rotate", admin=True, json={"overlap_seconds": 60}
    )
    assert rotated.status == 201
    new_secret = rotated.body["webhook_signing_secret"]
    ch = grpcutil.channel(stack.env["INVO_TENANTS_ADDR"])
    try:
        stub = tenants_pb2_grpc.TenantsServiceStub(ch)
        ids = [a["tenant_id"], b["tenant_id"], "tn_" + "0" * 26, "not-an-id"]
        urls_only = await grpcutil.call(
            stub.GetWebhookTargets, tenants_pb2.GetWebhookTargetsRequest(tenant_ids=ids), timeout_s=5
        )
        assert set(urls_only.targets) == {a["tenant_id"], b["tenant_id"]}  # unknown ids are left out
        assert urls_only.targets[a["tenant_id"]].webhook_url == "https://a.example.com/hook"
        assert urls_only.targets[b["tenant_id"]].webhook_url == ""
        assert not any(t.secrets for t in urls_only.targets.values())

        full = await grpcutil.call(
            stub.GetWebhookTargets,
            tenants_pb2.GetWebhookTargetsRequest(tenant_ids=ids, include_secrets=True),
            timeout_s=5,
        )
        # Newest first, both during the overlap.
        assert list(full.targets[a["tenant_id"]].secrets) == [new_secret, a["webhook_signing_secret"]]
        assert list(full.targets[b["tenant_id"]].secrets) == [b["webhook_signing_secret"]]

        with pytest.raises(errors.InvalidRequest):
            await grpcutil.call(
                stub.GetWebhookTargets,
                tenants_pb2.GetWebhookTargetsRequest(tenant_ids=[a["tenant_id"]] * 1001),
                timeout_s=5,
            )
    finally:
        await ch.close()
