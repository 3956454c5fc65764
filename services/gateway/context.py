"""What every gateway handler needs, built once per process."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from invo.v1 import ledger_pb2, tenants_pb2

from services.common import errors, limits
from services.common.config import Settings
from services.gateway import tenants_api
from services.gateway.auth import KeyCache
from services.gateway.backends import Backends
from services.gateway.coalesce import Coalescer
from services.gateway.ratelimit import AuthFailures, RateLimiter


class GatewayContext:
    def __init__(self, settings: Settings, backends: Backends) -> None:
        self.settings = settings
        self.backends = backends
        self.keys = KeyCache(backends, ttl_s=settings.auth_cache_ttl_s, size_max=settings.auth_cache_size_max)
        self.limiter = RateLimiter(burst_s=settings.rate_limit_burst_s)
        self.auth_failures = AuthFailures(
            burst=limits.AUTH_FAILURES_BURST,
            rate_per_s=limits.AUTH_FAILURES_PER_S,
            addresses_max=limits.AUTH_FAILURE_ADDRESSES_MAX,
        )
        # Keyed by (tenant_id, normalised email).
        self.balances: Coalescer[tuple[str, str], ledger_pb2.AccountBalance] = Coalescer(self._read_balances)
        self.purchases: Coalescer[ledger_pb2.PurchaseItemRequest, ledger_pb2.PurchaseItemResponse] = Coalescer(
            self._purchase_items
        )

    async def _read_balances(self, players: list[tuple[str, str]]) -> list[ledger_pb2.AccountBalance | BaseException]:
        unique = list(dict.fromkeys(players))
        resp = await self.backends.call(
            self.backends.ledger.GetPlayerBalances,
            ledger_pb2.GetPlayerBalancesRequest(
                players=[ledger_pb2.PlayerRef(tenant_id=t, player_email=e) for t, e in unique]
            ),
        )
        by_player = dict(zip(unique, resp.balances, strict=True))
        return [by_player[p] for p in players]

    async def _purchase_items(
        self, items: list[ledger_pb2.PurchaseItemRequest]
    ) -> list[ledger_pb2.PurchaseItemResponse | BaseException]:
        resp = await self.backends.call(
            self.backends.ledger.PurchaseItems, ledger_pb2.PurchaseItemsRequest(items=items)
        )
        out: list[ledger_pb2.PurchaseItemResponse | BaseException] = []
        for r in resp.results:
            if r.HasField("ok"):
                out.append(r.ok)
            else:
                md = [(m.key, m.value) for m in r.error.metadata]
                out.append(errors.from_code_number(r.error.grpc_code, r.error.message, md))
        return out

    async def close(self) -> None:
        await self.balances.close()
        await self.purchases.close()

    def tenant_json(self, t: tenants_pb2.Tenant) -> dict[str, Any]:
        return tenants_api.tenant_json(t, default_rate_limit=self.settings.rate_limit_per_second)


CTX = web.AppKey("ctx", GatewayContext)


def ctx_of(request: web.Request) -> GatewayContext:
    return request.app[CTX]
