"""The hosted checkout page and its API, the `/checkout` surface: opened by the session token only
(never an SDK key). The page is server-rendered (aiohttp-jinja2, templates and static files in
`checkout_assets/`, no build step); its script calls `/checkout/api/...` with the token as a bearer
credential. The payments service verifies every token; the gateway reads the tenant it names only
to pass on the tenant's settings (the payments service checks that the two agree).

Headers: a Content-Security-Policy allowing only the page's own script and the processor's, framed
only by the partner's own origins (those of success_url and cancel_url; the explicit review step is
the guard against a click lured onto the pay button); `Referrer-Policy: no-referrer`, so the token
never reaches success_url or the processor; no caching of anything that carries a token.
"""

from __future__ import annotations

import json
import mimetypes
import pathlib
import re
import urllib.parse
from typing import Any

import aiohttp_jinja2
import jinja2
import jwt
import markupsafe
from aiohttp import web
from invo.v1 import payments_pb2, tenants_pb2

from services.common import errors, limits, money
from services.gateway import auth, checkout_schema, declare
from services.gateway.checkout_schema import Pay
from services.gateway.context import ctx_of
from services.gateway.http import error_response, json_response
from services.gateway.payments_api import tenant_context
from services.gateway.tenants_api import iso

ASSETS = pathlib.Path(__file__).parent / "checkout_assets"
STATIC_PREFIX = "/checkout/static"
STATIC_NAME_RE = re.compile(r"^[a-z0-9_-]{1,40}\.(js|css|svg)$")
TENANT_ID_RE = re.compile(limits.TENANT_ID_PATTERN)
STRIPE_JS_ORIGIN = "https://js.stripe.com"
STRIPE_API = "https://api.stripe.com"
STRIPE_FRAMES = "https://hooks.stripe.com"
# Which page a refusal becomes (the JSON envelope's error_code -> the page's state).
STATES = {
    "SESSION_ALREADY_CONSUMED": ("completed", "Already paid", "This checkout link has already been used."),
    "SESSION_EXPIRED": ("expired", "Link expired", "This checkout link has expired. Return to the game to try again."),
    "SESSION_CANCELLED": ("cancelled", "Checkout cancelled", "This checkout was cancelled. Nothing was charged."),
    "INVALID_SESSION": (
        "invalid",
        "Link not valid",
        "This checkout link is not valid. Return to the game to try again.",
    ),
}
UNAVAILABLE = ("unavailable", "Checkout unavailable", "Checkout is unavailable right now. Try again in a moment.")

public = declare.Table(security=None)
page_api = declare.Table(security=declare.CHECKOUT)


def origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def _processor_origins(ctx: Any) -> tuple[str, str, list[str]]:
    """(script origin, REST origin, frame origins) of the processor's browser parts."""
    s = ctx.settings
    js = origin(s.processor_js_url) or STRIPE_JS_ORIGIN
    api = origin(s.processor_api_base) if s.processor_api_base else STRIPE_API
    frames = [js, api] + ([STRIPE_FRAMES] if js == STRIPE_JS_ORIGIN else [])
    return js, api, list(dict.fromkeys(frames))


def csp(ctx: Any, ancestors: list[str]) -> str:
    js, api, frames = _processor_origins(ctx)
    framing = " ".join(["'self'", *dict.fromkeys(a for a in ancestors if a)]) if ancestors else "*"
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src 'self' {js}",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src 'self' {api}",
            f"frame-src {' '.join(frames)}",
            f"frame-ancestors {framing}",
            "base-uri 'none'",
            "form-action 'none'",
        )
    )


def private(resp: web.StreamResponse) -> web.StreamResponse:
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


# -- the tenant a token names -------------------------------------------------------------


async def tenant_of(request: web.Request, token: str) -> tenants_pb2.Tenant:
    """The tenant the token names (unverified here: the payments service verifies the token and
    refuses one whose tenant is not this one), active and within its rate limit."""
    ctx = ctx_of(request)
    if not auth.well_formed(token, len_max=checkout_schema.TOKEN_LEN_MAX):
        raise invalid_session()
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise invalid_session() from None
    tid = claims.get("tid") if isinstance(claims, dict) else None
    if not isinstance(tid, str) or not TENANT_ID_RE.match(tid):
        raise invalid_session()
    try:
        tenant: tenants_pb2.Tenant = await ctx.backends.call(
            ctx.backends.tenants.GetTenant, tenants_pb2.GetTenantRequest(tenant_id=tid)
        )
    except errors.NotFound:
        raise invalid_session() from None
    if tenant.status != "active":
        raise errors.Forbidden("Checkout is not available for this game right now.", error_code="TENANT_SUSPENDED")
    wait_s = ctx.limiter.take(tenant.tenant_id, tenant.rate_limit_per_second or ctx.settings.rate_limit_per_second)
    if wait_s:
        raise errors.RateLimited(f"Too many requests; retry after {wait_s} second(s).", retry_after_s=wait_s)
    request["tenant_id"] = tenant.tenant_id  # for the request's log line
    request["currency_name"] = tenant.currency_name
    return tenant


def invalid_session() -> errors.Unauthenticated:
    return errors.Unauthenticated(
        "This checkout link is not valid.", error="invalid_session", error_code="INVALID_SESSION"
    )


def bearer(request: web.Request) -> str:
    value = auth.one_header(request, "Authorization")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthenticated(
            "Missing Authorization: Bearer <checkout session token>.",
            error="invalid_session",
            error_code="INVALID_SESSION",
        )
    return token.strip()


async def _page_call(request: web.Request, method_name: str, make: Any, *, timeout_s: float | None = None) -> Any:
    ctx = ctx_of(request)
    token = bearer(request)
    tenant = await tenant_of(request, token)
    method = getattr(ctx.backends.payments, method_name)
    return await ctx.backends.call(method, make(token, tenant_context(tenant)), timeout_s=timeout_s)


# -- JSON views ---------------------------------------------------------------------------


def page_session(view: payments_pb2.CheckoutView, currency_name: str) -> dict[str, Any]:
    s = view.session
    order: dict[str, Any] | None = None
    if view.HasField("order"):
        o = view.order
        order = {"order_id": o.order_id, "status": o.status}
        if view.client_secret:
            order["client_secret"] = view.client_secret
        if o.status in ("failed", "cancelled") and o.failure_message:
            order["failure_message"] = o.failure_message
        if o.status == "completed":  # what the page shows, and posts to the partner, once paid
            order["transaction_id"] = o.transaction_id
            order["currency_received"] = money.format_units(o.currency_amount_minor)
            if o.HasField("new_balance_minor"):
                order["new_balance"] = money.format_units(o.new_balance_minor)
    return {
        "session_id": s.session_id,
        "status": s.status,
        "usd_amount": money.format_usd(s.usd_cents),
        "currency_amount": money.format_units(s.usd_cents * money.MINOR_PER_CENT),
        "currency_name": currency_name,
        "expires_at": iso(s.expires_at),
        "success_url": s.success_url,
        "cancel_url": s.cancel_url,
        "saved_cards": [
            {"id": c.id, "brand": c.brand, "last4": c.last4, "exp_month": c.exp_month, "exp_year": c.exp_year}
            for c in view.saved_cards
        ],
        "order": order,
    }


def payment_json(p: payments_pb2.CheckoutPayment) -> dict[str, Any]:
    out, o = p.outcome, p.outcome.order
    if out.status == "requires_action":
        return {"status": "requires_action", "order_id": o.order_id, "client_secret": out.client_secret}
    if out.status == "pending":
        return {"status": "pending", "order_id": o.order_id}
    return {
        "status": "success",
        "order_id": o.order_id,
        "transaction_id": o.transaction_id,
        "currency_received": money.format_units(o.currency_amount_minor),
        "new_balance": money.format_units(out.new_balance_minor) if out.HasField("new_balance_minor") else None,
    }


def _pay_timeout_s(request: web.Request) -> float:
    # The card's lookup, perhaps the player's Customer, the intent's create and confirm, the credit.
    s = ctx_of(request).settings
    return 4 * s.processor_timeout_s + s.rpc_timeout_s


@page_api.adopt(checkout_schema.PAGE_SESSION)
async def session_view(request: web.Request) -> web.StreamResponse:
    view = await _page_call(request, "OpenCheckout", lambda t, c: payments_pb2.CheckoutTokenRequest(token=t, tenant=c))
    return private(json_response(page_session(view, request["currency_name"])))


@page_api.adopt(checkout_schema.PAGE_PAY)
async def pay(request: web.Request, body: Pay) -> web.StreamResponse:
    paid = await _page_call(
        request,
        "PayCheckout",
        lambda t, c: payments_pb2.PayCheckoutRequest(
            token=t, tenant=c, payment_method_id=body.payment_method_id, save_card=body.save_card
        ),
        timeout_s=_pay_timeout_s(request),
    )
    return private(json_response(payment_json(paid)))


@page_api.adopt(checkout_schema.PAGE_CONFIRM)
async def confirm(request: web.Request, body: Any) -> web.StreamResponse:
    paid = await _page_call(
        request,
        "ConfirmCheckout",
        lambda t, c: payments_pb2.CheckoutTokenRequest(token=t, tenant=c),
        timeout_s=_pay_timeout_s(request),
    )
    return private(json_response(payment_json(paid)))


@page_api.adopt(checkout_schema.PAGE_CANCEL)
async def cancel(request: web.Request, body: Any) -> web.StreamResponse:
    s = await _page_call(
        request,
        "CancelCheckout",
        lambda t, c: payments_pb2.CheckoutTokenRequest(token=t, tenant=c),
        timeout_s=_pay_timeout_s(request),
    )
    return private(json_response({"status": "cancelled", "cancel_url": s.cancel_url}))


@page_api.adopt(checkout_schema.PAGE_REMOVE_CARD)
async def remove_card(request: web.Request) -> web.StreamResponse:
    card_id = request.match_info["card_id"]
    view = await _page_call(
        request,
        "RemoveSavedCard",
        lambda t, c: payments_pb2.RemoveSavedCardRequest(token=t, tenant=c, card_id=card_id),
        timeout_s=_pay_timeout_s(request),
    )
    return private(json_response({"removed": True, "saved_cards": page_session(view, "")["saved_cards"]}))


@web.middleware
async def private_answers(request: web.Request, handler: Any) -> web.StreamResponse:
    """No answer of this surface is cached, and none sends a referrer (a page URL holds a token):
    a refusal neither, so it is turned into its envelope here rather than outside the surface."""
    try:
        resp = await handler(request)
    except errors.InvoError as exc:
        resp = error_response(exc)
    resp.headers.setdefault("Cache-Control", "no-store")
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


# -- the page -----------------------------------------------------------------------------


def _boot_json(value: dict[str, Any]) -> markupsafe.Markup:
    """JSON that cannot end the <script type="application/json"> element it sits in."""
    text = json.dumps(value, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return markupsafe.Markup(text)  # noqa: S704 (escaped above for this one context)


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def _render(request: web.Request, context: dict[str, Any], *, status: int, ancestors: list[str]) -> web.Response:
    ctx = ctx_of(request)
    base = {"static_prefix": STATIC_PREFIX, "processor_js_url": ctx.settings.processor_js_url, "boot_json": ""}
    resp = aiohttp_jinja2.render_template("checkout.html", request, {**base, **context}, status=status)
    resp.headers["Content-Security-Policy"] = csp(ctx, ancestors)
    return resp


@public.adopt(checkout_schema.PAGE)
async def page(request: web.Request, query: checkout_schema.PageQuery) -> web.StreamResponse:
    ctx = ctx_of(request)
    token = query.session
    try:
        tenant = await tenant_of(request, token)
        view = await ctx.backends.call(
            ctx.backends.payments.OpenCheckout,
            payments_pb2.CheckoutTokenRequest(token=token, tenant=tenant_context(tenant)),
        )
        if view.session.status == "completed":  # the seed's single use: the used-link page
            raise errors.Conflict(
                "This checkout session has already been paid.",
                error="session_already_consumed",
                error_code="SESSION_ALREADY_CONSUMED",
            )
    except errors.InvoError as exc:
        if _wants_json(request):
            raise
        state, title, message = STATES.get(
            exc.error_code, UNAVAILABLE if exc.http_status >= 500 else STATES["INVALID_SESSION"]
        )
        if exc.http_status == 403:
            state, title, message = UNAVAILABLE
        return private(
            _render(request, {"state": state, "title": title, "message": message}, status=exc.http_status, ancestors=[])
        )
    session = page_session(view, tenant.currency_name)
    success_origin = origin(session["success_url"])
    boot = {
        "session": session,
        "token": token,
        "processor": {
            "publishable_key": ctx.settings.processor_publishable_key,
            "js_url": ctx.settings.processor_js_url,
        },
        "success_origin": success_origin,
    }
    context = {"state": "open", "title": "Checkout", "message": "", "boot_json": _boot_json(boot), "session": session}
    return private(_render(request, context, status=200, ancestors=[success_origin, origin(session["cancel_url"])]))


class Static:
    """The page's own files, read once at start (a fixed set: nothing else under the folder is served)."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        for path in sorted(folder.glob("*")):
            if path.is_file() and STATIC_NAME_RE.match(path.name):
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                if path.suffix == ".js":
                    kind = "text/javascript"
                self.files[path.name] = (path.read_bytes(), kind)


STATIC = Static(ASSETS / "static")


@public.adopt(checkout_schema.STATIC_FILE)
async def static_file(request: web.Request) -> web.StreamResponse:
    found = STATIC.files.get(request.match_info["name"])
    if found is None:
        raise errors.NotFound("No such file.")
    body, kind = found
    resp = web.Response(body=body, content_type=kind, charset="utf-8" if kind.startswith("text/") else None)
    resp.headers["Cache-Control"] = "public, max-age=300"  # no token in these
    return resp


def setup(sub: web.Application) -> None:
    aiohttp_jinja2.setup(sub, loader=jinja2.FileSystemLoader(str(ASSETS / "templates")), autoescape=True)
