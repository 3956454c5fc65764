"""One aiohttp sub-application per surface, each with its own authentication middleware:

| prefix      | opened by                                  | routes                                   |
|-------------|--------------------------------------------|------------------------------------------|
| `/api`      | `X-Game-Secret-Key` (an SDK key), rate-limited per tenant | the partner API               |
| `/admin`    | an operator's bearer credential            | the operators' API                       |
| `/webhooks` | the processor's signature (`processor_webhooks.py`) | processor events in            |
| `/checkout` | a checkout session token (`checkout_page.py`) | the hosted page, its files and its API |

The route tables keep their full
paths (`/api/tenant`), so a handler reads the same wherever it is mounted; `mount` strips the
prefix when it adds them to their sub-application.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from services.common import errors
from services.common.logs import operator_id_var
from services.gateway import (
    ach_webhooks,
    admin,
    answers,
    auth,
    checkout_api,
    checkout_page,
    console,
    console_pages,
    declare,
    ledger_api,
    operator_actions,
    operators,
    operators_api,
    orders_api,
    payments_api,
    payouts_api,
    players_admin,
    processor_webhooks,
    statements_api,
    subscriptions_api,
    transfers_admin,
    transfers_api,
    webhooks_api,
)
from services.gateway.context import CTX, GatewayContext, ctx_of
from services.gateway.http import json_response

SDK_KEY_HEADER = "X-Game-Secret-Key"
# The backends the gateway routes to, and so what /readyz waits for.
ROUTED_SERVICES = ("tenants", "ledger", "payments", "transfers", "payouts", "webhooks", "subscriptions")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

own_tenant = declare.Table(security=declare.SDK_KEY)


@own_tenant.declare(
    "GET", "/api/tenant", summary="The calling tenant's own configuration (no secrets).", answers={200: answers.Tenant}
)
async def get_own_tenant(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    return json_response(ctx.tenant_json(request["tenant"]))


@web.middleware
async def sdk_key_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The partner API: the key's tenant, active, within its rate limit."""
    ctx = ctx_of(request)
    key = auth.one_header(request, SDK_KEY_HEADER)
    if not key:
        raise errors.Unauthenticated(f"Missing {SDK_KEY_HEADER} header.", error_code="MISSING_API_KEY")
    tenant = (await ctx.keys.resolve(key, guard=ctx.auth_failures, address=request.remote)).tenant
    request["tenant"] = tenant
    request["tenant_id"] = tenant.tenant_id
    if tenant.status != "active":
        raise errors.Forbidden("This tenant is suspended.", error_code="TENANT_SUSPENDED")
    wait_s = ctx.limiter.take(tenant.tenant_id, tenant.rate_limit_per_second or ctx.settings.rate_limit_per_second)
    if wait_s:
        raise errors.RateLimited(
            f"Too many requests for this tenant; retry after {wait_s} second(s).", retry_after_s=wait_s
        )
    return await handler(request)


@web.middleware
async def operator_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The operators' API: a named operator (or the bootstrap token) whose role allows the route;
    never an SDK key. The operator's id goes with every call the handler makes (`operator_id_var`)."""
    operator = await operators.authenticate(ctx_of(request), request)
    request["operator_id"] = operator.operator_id
    request["operator_role"] = operator.role
    token = operator_id_var.set(operator.operator_id)
    try:
        if operator_actions.is_action(request):  # recorded, its role refusal too (operator_actions.py)
            return await operator_actions.recorded(request, handler, operator)
        operators.authorize(request, operator)
        return await handler(request)
    finally:
        operator_id_var.reset(token)


def mount(parent: web.Application, prefix: str, sub: web.Application, *tables: web.RouteTableDef) -> None:
    for table in tables:
        for route in table:
            if not isinstance(route, web.RouteDef) or not route.path.startswith(prefix + "/"):
                raise ValueError(f"route {route!r} does not belong under {prefix}")
            sub.router.add_route(route.method, route.path.removeprefix(prefix), route.handler, **route.kwargs)
    parent.add_subapp(prefix, sub)


def _sub(ctx: GatewayContext, *middlewares: Callable[..., Awaitable[web.StreamResponse]]) -> web.Application:
    sub = web.Application(middlewares=list(middlewares), client_max_size=ctx.settings.http_body_max_bytes)
    sub[CTX] = ctx
    return sub


def mount_all(app: web.Application, ctx: GatewayContext) -> None:
    mount(
        app,
        "/api",
        _sub(ctx, sdk_key_auth),
        own_tenant,
        ledger_api.public,
        payments_api.public,
        checkout_api.public,
        transfers_api.public,
        payouts_api.public,
        subscriptions_api.public,
        webhooks_api.public,
        statements_api.public,
    )
    mount(
        app,
        "/admin",
        operators.with_cache(_sub(ctx, operator_auth), ctx),
        admin.routes,
        ledger_api.admin,
        orders_api.admin,
        payouts_api.admin,
        transfers_api.admin,
        webhooks_api.admin,
        operators_api.routes,
        operator_actions.routes,
        statements_api.admin,
        transfers_admin.admin,
        players_admin.admin,
    )
    console_app = _sub(ctx, console.console_middleware)
    console.setup(console_app, ctx.settings.console_keys)
    mount(app, "/console", console_app, console.routes, console_pages.routes)
    checkout = _sub(ctx, checkout_page.private_answers)
    checkout_page.setup(checkout)
    mount(app, "/checkout", checkout, checkout_page.public, checkout_page.page_api)
    mount(
        app,
        "/webhooks",
        _sub(ctx, processor_webhooks.provider_signature),
        processor_webhooks.routes,
        ach_webhooks.routes,
    )


def routes(app: web.Application) -> list[tuple[str, str]]:
    """(full path, method) of every route, sub-applications included (the OpenAPI tests use it)."""
    out: list[tuple[str, str]] = []
    for resource in app.router.resources():
        sub = resource.get_info().get("app")
        if isinstance(sub, web.Application):
            out.extend(routes(sub))  # their paths carry the prefix once mounted
            continue
        for route in resource:
            if route.method != "HEAD":
                out.append((resource.canonical, route.method))
    return out
