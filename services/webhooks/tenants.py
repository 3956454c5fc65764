"""The tenants the webhooks service delivers for: URLs and signing secrets, from the tenants service."""

from __future__ import annotations

from typing import Any

from invo.v1 import tenants_pb2

from services.common import errors, grpcutil

TENANT_LOOKUP_BATCH = 1000  # the tenants service's limit per GetWebhookTargets call


class TenantCache:
    """Tenants' webhook settings, read fresh for each batch or send round (one call for all the
    tenants in it, never cached across rounds): a rotated secret or a changed URL applies to the
    very next delivery. While the tenants service is away every call raises, and the round that
    made it fails and is retried (services/common/loops.py)."""

    def __init__(self, stub: Any, timeout_s: float) -> None:
        self.stub = stub
        self.timeout_s = timeout_s

    async def get(self, tenant_id: str) -> tenants_pb2.WebhookSecrets:
        info = (await self.get_many({tenant_id}, secrets=False)).get(tenant_id)
        if info is None:
            raise errors.NotFound("No such tenant.", error_code="TENANT_NOT_FOUND")
        return info

    async def get_many(self, tenant_ids: set[str], *, secrets: bool) -> dict[str, tenants_pb2.WebhookSecrets]:
        """The tenants that exist, by id; the signing secrets only when `secrets` (for sending)."""
        found: dict[str, tenants_pb2.WebhookSecrets] = {}
        ordered = sorted(tenant_ids)
        for i in range(0, len(ordered), TENANT_LOOKUP_BATCH):
            resp: tenants_pb2.GetWebhookTargetsResponse = await grpcutil.call(
                self.stub.GetWebhookTargets,
                tenants_pb2.GetWebhookTargetsRequest(
                    tenant_ids=ordered[i : i + TENANT_LOOKUP_BATCH], include_secrets=secrets
                ),
                timeout_s=self.timeout_s,
            )
            found.update(resp.targets)
        return found
