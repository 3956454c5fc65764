"""What every gateway handler needs, built once per process."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from invo.v1 import tenants_pb2

from services.common.config import Settings
from services.gateway import tenants_api
from services.gateway.auth import KeyCache
from services.gateway.backends import Backends
from services.gateway.ratelimit import RateLimiter


class GatewayContext:
    def __init__(self, settings: Settings, backends: Backends) -> None:
        self.settings = settings
        self.backends = backends
        self.keys = KeyCache(backends, ttl_s=settings.auth_cache_ttl_s, size_max=settings.auth_cache_size_max)
        self.limiter = RateLimiter(burst_s=settings.rate_limit_burst_s)

    def tenant_json(self, t: tenants_pb2.Tenant) -> dict[str, Any]:
        return tenants_api.tenant_json(t, default_rate_limit=self.settings.rate_limit_per_second)


CTX = web.AppKey("ctx", GatewayContext)


def ctx_of(request: web.Request) -> GatewayContext:
    return request.app[CTX]
