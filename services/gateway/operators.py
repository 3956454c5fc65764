"""Who opens the admin API, and what each role may do there.

A bearer credential is either the bootstrap token (`INVO_ADMIN_TOKEN`, acting as the operator
`op_bootstrap` with the admin role: it creates the first operators) or a named operator's
`invo_op_...` credential, resolved through the tenants service's OperatorsService with a short,
bounded in-process cache keyed by a SHA-256 of the credential, never the credential itself.
Revoking an operator through this gateway drops its entries at once; other gateway replicas stop
accepting it within `INVO_AUTH_CACHE_TTL_S`.

`PERMISSIONS` is the one table of what each admin route needs, keyed by (method, the route's
canonical path). A route missing from it needs the admin role (fail closed), and a test checks
that every routed admin route is listed, so a new route cannot be forgotten.
"""

from __future__ import annotations

import dataclasses
import functools

from aiohttp import web
from invo.v1 import tenants_pb2, tenants_pb2_grpc

from services.common import errors
from services.common.crypto import constant_time_equal
from services.gateway import auth
from services.gateway.backends import Backends
from services.gateway.context import GatewayContext
from services.gateway.ratelimit import AuthFailures

BOOTSTRAP_OPERATOR = "op_bootstrap"
CREDENTIAL_PREFIX = "invo_op_"
CREDENTIAL_LEN_MAX = 100
TOKEN_LEN_MAX = 512  # any bearer token we issue or configure is far shorter

VIEWER, SUPPORT, FINANCE, ADMIN = "viewer", "support", "finance", "admin"
ROLES = (VIEWER, SUPPORT, FINANCE, ADMIN)

# What a route is for -> the roles that may do it. Support and finance are siblings: neither does
# the other's work; admin does everything.
READ = frozenset({VIEWER, SUPPORT, FINANCE, ADMIN})  # looks, changes nothing
# Partners' integrations: redeliveries and revoking a key. Nothing that answers a secret: a new SDK
# key or signing secret would let its holder act as the tenant (spend players' wallets, forge
# webhooks), so issuing and rotating them is the admin's.
CARE = frozenset({SUPPORT, ADMIN})
MONEY = frozenset({FINANCE, ADMIN})  # moves money: credits, debits, later refunds and payouts
MANAGE = frozenset({ADMIN})  # tenants' terms and the operators themselves

PERMISSIONS: dict[tuple[str, str], frozenset[str]] = {
    # tenants
    ("POST", "/admin/tenants"): MANAGE,
    ("GET", "/admin/tenants/{tenant_id}"): READ,
    ("PATCH", "/admin/tenants/{tenant_id}"): MANAGE,
    # SDK keys (the listing shows prefixes only)
    ("GET", "/admin/tenants/{tenant_id}/keys"): READ,
    ("POST", "/admin/tenants/{tenant_id}/keys"): MANAGE,
    ("POST", "/admin/tenants/{tenant_id}/keys/{key_id}/rotate"): MANAGE,
    ("POST", "/admin/tenants/{tenant_id}/keys/{key_id}/revoke"): CARE,
    # the ledger
    ("POST", "/admin/players/credit"): MONEY,
    ("POST", "/admin/players/debit"): MONEY,
    ("GET", "/admin/ledger/check"): READ,
    ("GET", "/admin/tenants/{tenant_id}/statements/{day}"): READ,
    ("GET", "/admin/volumes"): READ,
    ("GET", "/admin/tenants/{tenant_id}/player"): READ,
    ("GET", "/admin/disputes"): READ,
    # transfers, as their tenants read them; cancelling one not yet claimed is the source's care
    ("GET", "/admin/tenants/{tenant_id}/transfers"): READ,
    ("GET", "/admin/tenants/{tenant_id}/transfers/{transfer_id}"): READ,
    ("POST", "/admin/tenants/{tenant_id}/transfers/{transfer_id}/cancel"): CARE,
    # orders after the sale
    ("GET", "/admin/orders/{order_id}"): READ,
    ("POST", "/admin/orders/{order_id}/refunds"): MONEY,
    # payouts: reading is anyone's; asking, approving and rejecting move money
    ("GET", "/admin/payouts"): READ,
    ("GET", "/admin/payouts/{payout_id}"): READ,
    ("POST", "/admin/payouts"): MONEY,
    ("POST", "/admin/payouts/{payout_id}/approve"): MONEY,
    ("POST", "/admin/payouts/{payout_id}/reject"): MONEY,
    # development only: the SMS outbox shows PINs and claim codes, so not to a viewer
    ("GET", "/admin/dev/sms"): CARE,
    # webhooks
    ("GET", "/admin/webhooks/deliveries"): READ,
    ("GET", "/admin/webhooks/deliveries/{delivery_id}"): READ,
    ("POST", "/admin/webhooks/deliveries/{delivery_id}/redeliver"): CARE,
    ("POST", "/admin/webhooks/redeliver-failed"): CARE,
    ("POST", "/admin/tenants/{tenant_id}/webhook-secret/rotate"): MANAGE,
    # operators (names and emails are not for every role to read)
    ("POST", "/admin/operators"): MANAGE,
    ("GET", "/admin/operators"): MANAGE,
    ("POST", "/admin/operators/{operator_id}/revoke"): MANAGE,
    # who am I (the console asks at sign-in)
    ("GET", "/admin/me"): READ,
    # the operator action log: what was done, by whom (ids only), never a body
    ("GET", "/admin/operator-actions"): READ,
}


def roles_for(method: str, canonical_path: str) -> frozenset[str]:
    """The roles that may call a route; a route not in the table is for admins only."""
    if method == "HEAD":  # aiohttp answers HEAD with the GET handler
        method = "GET"
    return PERMISSIONS.get((method, canonical_path), MANAGE)


@dataclasses.dataclass(frozen=True, slots=True)
class Operator:
    operator_id: str
    role: str


BOOTSTRAP = Operator(BOOTSTRAP_OPERATOR, ADMIN)


class OperatorCache:
    def __init__(self, backends: Backends, *, ttl_s: float, size_max: int) -> None:
        self.backends = backends
        # The tenants process serves OperatorsService on the same channel as TenantsService.
        self.stub = tenants_pb2_grpc.OperatorsServiceStub(backends.channels["tenants"])
        self.credentials: auth.Credentials[Operator] = auth.Credentials(ttl_s=ttl_s, size_max=size_max)

    async def resolve(self, credential: str, *, guard: AuthFailures, address: str | None) -> Operator:
        """The credential's operator; raises `Unauthenticated` for an unknown or revoked one."""
        return await auth.check(
            self.credentials, credential, functools.partial(self._fetch, credential), guard=guard, address=address
        )

    async def _fetch(self, credential: str) -> tuple[Operator, float | None]:
        resp: tenants_pb2.Operator = await self.backends.call(
            self.stub.AuthenticateOperator, tenants_pb2.AuthenticateOperatorRequest(credential=credential)
        )
        return Operator(resp.operator_id, resp.role), None

    def forget(self, operator_id: str) -> None:
        self.credentials.hits.forget(lambda op: op.operator_id == operator_id)


OPERATOR_CACHE = web.AppKey("operator_cache", OperatorCache)


def with_cache(sub: web.Application, ctx: GatewayContext) -> web.Application:
    """The admin sub-application, holding this gateway's operator cache."""
    sub[OPERATOR_CACHE] = OperatorCache(
        ctx.backends, ttl_s=ctx.settings.auth_cache_ttl_s, size_max=ctx.settings.auth_cache_size_max
    )
    return sub


def cache_of(request: web.Request) -> OperatorCache:
    return request.app[OPERATOR_CACHE]


# The console calls the admin API over loopback on behalf of a browser: failed sign-ins count against
# the browser's address, which it names in this header. Honoured from loopback only (the gateway's
# own pod); any other peer counts as itself, so a client cannot choose the bucket it spends.
CONSOLE_CLIENT_HEADER = "X-Invo-Console-Client"
LOOPBACK = frozenset({"127.0.0.1", "::1"})


def client_address(request: web.Request) -> str | None:
    forwarded = request.headers.get(CONSOLE_CLIENT_HEADER, "")
    if request.remote in LOOPBACK and 0 < len(forwarded) <= 64:
        return forwarded
    return request.remote


async def authenticate(ctx: GatewayContext, request: web.Request) -> Operator:
    """The operator a request's bearer credential belongs to; an SDK key never is one."""
    header = auth.one_header(request, "Authorization")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise errors.Unauthenticated(
            "Missing admin bearer token (Authorization: Bearer <token>).", error_code="MISSING_ADMIN_TOKEN"
        )
    # Bytes that were not UTF-8 (surrogates here), control characters, a token longer than any we
    # issue: refused before anything hashes or compares it.
    if not auth.well_formed(token, len_max=TOKEN_LEN_MAX):
        raise errors.Unauthenticated("Invalid admin token.", error_code="INVALID_ADMIN_TOKEN")
    guard, address = ctx.auth_failures, client_address(request)
    # Named operators keep working once the bootstrap token is retired (INVO_ADMIN_TOKEN empty).
    if token.startswith(CREDENTIAL_PREFIX) and len(token) <= CREDENTIAL_LEN_MAX:
        return await cache_of(request).resolve(token, guard=guard, address=address)
    if not ctx.settings.admin_token:
        raise errors.Unauthenticated("The bootstrap admin token is disabled.", error_code="ADMIN_DISABLED")
    # The bootstrap token costs no lookup, but guessing it is what the limit is for.
    auth.throttle(guard, address)
    if constant_time_equal(token, ctx.settings.admin_token):
        return BOOTSTRAP
    guard.failed(address)
    raise errors.Unauthenticated("Invalid admin token.", error_code="INVALID_ADMIN_TOKEN")


def authorize(request: web.Request, operator: Operator) -> None:
    """403 unless the operator's role may call the matched route (from `PERMISSIONS`)."""
    resource = request.match_info.route.resource
    if resource is None:
        return  # nothing matched: the 404 or 405 that follows runs no handler
    allowed = roles_for(request.method, resource.canonical)
    if operator.role not in allowed:
        needed = " or ".join(r for r in ROLES if r in allowed)
        raise errors.Forbidden(
            f"This action needs the {needed} role; this operator is {operator.role}.",
            error_code="OPERATOR_ROLE_FORBIDDEN",
        )
