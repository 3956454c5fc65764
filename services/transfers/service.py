"""TransfersService over gRPC. Today it answers where a tenant's users may send currency
(`ListDestinations`, under `policy.py`); the transfers themselves, their SMS PINs and claim codes
arrive with the rest of issue 14 (sms.py, phones.py and codes.py are their parts, built first)."""

from __future__ import annotations

from typing import Any

import asyncpg
from invo.v1 import tenants_pb2, tenants_pb2_grpc, transfers_pb2, transfers_pb2_grpc

from services.common import errors, grpcutil
from services.common.config import Settings
from services.common.grpcutil import GrpcService
from services.transfers.policy import refusal

DESTINATIONS_LIMIT_MAX = 500
TARGETS_PAGE = 500  # tenants read from the tenants service per call
SCAN_PAGES_MAX = 20  # per answer: a page of destinations never reads more than 10,000 tenants


class TransfersServicer(transfers_pb2_grpc.TransfersServiceServicer):
    def __init__(self, tenants: Any, *, timeout_cap_s: float) -> None:
        self.tenants = tenants
        self.timeout_cap_s = timeout_cap_s

    async def _call(self, method: Any, request: Any, deadline: float | None) -> Any:
        return await grpcutil.call(
            method, request, timeout_s=grpcutil.timeout_within(deadline, cap_s=self.timeout_cap_s)
        )

    async def ListDestinations(self, request: transfers_pb2.ListDestinationsRequest, context: Any) -> Any:
        if not 1 <= request.limit <= DESTINATIONS_LIMIT_MAX:
            raise errors.InvalidRequest(f"limit must be from 1 to {DESTINATIONS_LIMIT_MAX}")
        deadline = grpcutil.deadline_of(context)
        source: tenants_pb2.Tenant = await self._call(
            self.tenants.GetTenant, tenants_pb2.GetTenantRequest(tenant_id=request.source_tenant_id), deadline
        )
        out = transfers_pb2.ListDestinationsResponse()
        if source.status != "active" or not source.allows_outgoing_transfers:
            return out  # nothing is reachable
        # A source limited to its linked tenants asks for those only.
        linked = sorted(set(source.linked_game_ids)) if not source.universal_transfers else []
        if not source.universal_transfers and not linked:
            return out
        after = request.after_tenant_id
        for _ in range(SCAN_PAGES_MAX):
            page: tenants_pb2.ListTransferTargetsResponse = await self._call(
                self.tenants.ListTransferTargets,
                tenants_pb2.ListTransferTargetsRequest(
                    environment=source.environment, after_tenant_id=after, limit=TARGETS_PAGE, tenant_ids=linked
                ),
                deadline,
            )
            for t in page.tenants:
                after = t.tenant_id
                if refusal(source, t) is None:
                    out.destinations.append(
                        transfers_pb2.Destination(tenant_id=t.tenant_id, name=t.name, currency_name=t.currency_name)
                    )
                    if len(out.destinations) == request.limit:
                        out.has_more = True  # perhaps: the next page says
                        out.next_after_tenant_id = after
                        return out
            if not page.has_more:
                return out
        out.has_more = True  # looked at enough for one answer: the next one goes on from here
        out.next_after_tenant_id = after
        return out


async def setup(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    tenants_channel = grpcutil.channel(settings.tenants_addr)
    svc.on_shutdown(tenants_channel.close)
    svc.add(
        transfers_pb2_grpc.add_TransfersServiceServicer_to_server,
        TransfersServicer(tenants_pb2_grpc.TenantsServiceStub(tenants_channel), timeout_cap_s=settings.rpc_timeout_s),
        transfers_pb2.DESCRIPTOR.services_by_name["TransfersService"].full_name,
    )
