"""The operators' console at /console/: server-rendered pages (aiohttp-jinja2, no build step, no
script) over the admin API, under the signed-in operator's own role (console_session.py).

A page shows only what the operator's role may do (`operators.roles_for`, the admin API's one
table); the API refuses the rest anyway. Every action goes through a confirmation page that
carries a fresh idempotency key where the API takes one, and lands in the operator action log,
which the console shows. Off (404) unless `INVO_CONSOLE_KEYS` is set.
"""

from __future__ import annotations

import pathlib
import re
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import aiohttp_jinja2
import jinja2
from aiohttp import web

from services.common import crypto, limits
from services.gateway import operators
from services.gateway.console_chart import chart
from services.gateway.console_session import AdminApi, Session, clear_cookie, client, new_session, set_cookie
from services.gateway.context import ctx_of

ASSETS = pathlib.Path(__file__).parent / "console_assets"
CSS = (ASSETS / "console.css").read_bytes()


class State:
    """The console sub-application's own: its keys (None: the console is off) and HTTP client."""

    def __init__(self, keyring: crypto.Keyring | None) -> None:
        self.keyring = keyring
        self.http: aiohttp.ClientSession | None = None


STATE = web.AppKey("console_state", State)
PUBLIC_PATHS = ("/console/login", "/console/console.css")
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
TENANT_RE = re.compile(limits.TENANT_ID_PATTERN)
PAYOUT_RE = re.compile(r"^po_[0-9A-Z]{26}$")
# Notices after an action: fixed texts, never anything from the request.
NOTICES = {
    "suspended": "The tenant is suspended: its SDK keys are refused until it is resumed.",
    "active": "The tenant is active again.",
    "approved": "Approval recorded.",
    "rejected": "The payout is rejected and its hold released.",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
routes = web.RouteTableDef()


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def can(session: Session, method: str, route: str) -> bool:
    return session.role in operators.roles_for(method, route)


def page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    session: Session | None = request.get("console_session")
    return aiohttp_jinja2.render_template(
        template,
        request,
        {"session": session, "can": (lambda m, r: can(session, m, r)) if session else (lambda m, r: False), **context},
        status=status,
    )


def api(request: web.Request) -> AdminApi:
    ctx = ctx_of(request)
    base = f"http://127.0.0.1:{ctx.settings.gateway_port}"
    return AdminApi(_http(request), base, request["console_session"].credential, request.remote)


def refused(request: web.Request, status: int, answer: Any) -> web.Response:
    """The API's refusal as a page: its status, error code and message (the API's own words)."""
    code = answer.get("error_code", "") if isinstance(answer, dict) else ""
    message = answer.get("message", "") if isinstance(answer, dict) else "The request failed."
    return page(request, "error.html", status=status, code=code, message=message)


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Off without keys; the security headers; the session (sign-in page otherwise); CSRF on posts."""
    keyring = request.app[STATE].keyring
    if keyring is None:
        raise web.HTTPNotFound()
    session = Session.open(keyring, request.cookies.get("invo_console"))
    request["console_session"] = session
    if session is None and request.path not in PUBLIC_PATHS:
        resp: web.StreamResponse = see_other("/console/login")
    elif request.method == "POST" and request.path != "/console/login":
        form = await request.post()
        token = form.get("csrf")
        assert session is not None
        if not isinstance(token, str) or not crypto.constant_time_equal(token, session.csrf):
            resp = page(
                request,
                "error.html",
                status=403,
                code="CSRF_REFUSED",
                message="This form has expired; reload the page.",
            )
        else:
            resp = await handler(request)
    else:
        resp = await handler(request)
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers.setdefault("Cache-Control", "no-store")
    return resp


@routes.get("/console/console.css")
async def css(request: web.Request) -> web.Response:
    resp = web.Response(body=CSS, content_type="text/css", charset="utf-8")
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


@routes.get("/console/login")
async def login_form(request: web.Request) -> web.Response:
    return page(request, "login.html")


@routes.post("/console/login")
async def login(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    form = await request.post()
    credential = form.get("credential")
    if not isinstance(credential, str) or not 1 <= len(credential) <= operators.TOKEN_LEN_MAX:
        return page(request, "login.html", status=400, problem="Enter your operator credential.")
    probe = AdminApi(
        _http(request), f"http://127.0.0.1:{ctx.settings.gateway_port}", credential.strip(), request.remote
    )
    status, me = await probe.call("GET", "/admin/me")
    if status != 200 or not isinstance(me, dict):
        problem = (
            "Too many failed sign-ins from here; wait a minute." if status == 429 else "That credential is not valid."
        )
        return page(request, "login.html", status=401 if status != 429 else 429, problem=problem)
    session = new_session(probe.credential, me["operator_id"], me["role"], ctx.settings.console_session_s)
    resp = see_other("/console/")
    set_cookie(resp, request, session.seal(keyring_of(request)), ctx.settings.console_session_s)
    return resp


@routes.post("/console/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    resp = see_other("/console/login")
    clear_cookie(resp)
    return resp


@routes.get("/console/")
async def overview(request: web.Request) -> web.Response:
    status, check = await api(request).call("GET", "/admin/ledger/check")
    if status != 200:
        return refused(request, status, check)
    status, volumes = await api(request).call("GET", "/admin/volumes", query={"hours": "48"})
    return page(request, "overview.html", check=check, chart=chart(volumes) if status == 200 else None)


@routes.get("/console/tenants")
async def tenant_lookup(request: web.Request) -> web.StreamResponse:
    tenant_id = request.query.get("tenant_id", "").strip()
    if TENANT_RE.fullmatch(tenant_id):
        return see_other(f"/console/tenants/{tenant_id}")
    return page(request, "tenant_lookup.html", problem="No tenant has that id." if tenant_id else None)


@routes.get("/console/tenants/{tenant_id}")
async def tenant(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant_id"]
    status, t = await api(request).call("GET", f"/admin/tenants/{urllib.parse.quote(tenant_id, safe='')}")
    if status != 200:
        return refused(request, status, t)
    _, keys = await api(request).call("GET", f"/admin/tenants/{tenant_id}/keys")
    _, log = await api(request).call("GET", "/admin/operator-actions", query={"tenant_id": tenant_id, "limit": "20"})
    notice = NOTICES.get(request.query.get("notice", ""))
    return page(
        request, "tenant.html", t=t, keys=(keys or {}).get("data", []), log=(log or {}).get("data", []), notice=notice
    )


@routes.get("/console/tenants/{tenant_id}/status")
async def confirm_status(request: web.Request) -> web.Response:
    tenant_id, to = request.match_info["tenant_id"], request.query.get("to", "")
    if not TENANT_RE.fullmatch(tenant_id) or to not in ("suspended", "active"):
        return page(request, "error.html", status=400, code="INVALID_REQUEST", message="Nothing to confirm.")
    verb = "Suspend" if to == "suspended" else "Resume"
    return page(
        request,
        "confirm.html",
        title=f"{verb} tenant {tenant_id}?",
        detail="Its SDK keys are refused while it is suspended." if to == "suspended" else "Its SDK keys work again.",
        action=f"/console/tenants/{tenant_id}/status",
        fields={"to": to},
        button=verb,
        back=f"/console/tenants/{tenant_id}",
    )


@routes.post("/console/tenants/{tenant_id}/status")
async def set_status(request: web.Request) -> web.StreamResponse:
    tenant_id = request.match_info["tenant_id"]
    to = (await request.post()).get("to")
    if not TENANT_RE.fullmatch(tenant_id) or to not in ("suspended", "active"):
        return page(request, "error.html", status=400, code="INVALID_REQUEST", message="Nothing to do.")
    status, answer = await api(request).call("PATCH", f"/admin/tenants/{tenant_id}", body={"status": to})
    if status != 200:
        return refused(request, status, answer)
    return see_other(f"/console/tenants/{tenant_id}?notice={to}")


@routes.get("/console/payouts")
async def payouts(request: web.Request) -> web.Response:
    status_filter = request.query.get("status", "requested")
    tenant_id = request.query.get("tenant_id", "")
    query = {"status": status_filter, "limit": "100", "tenant_id": tenant_id if TENANT_RE.fullmatch(tenant_id) else ""}
    status, page_ = await api(request).call("GET", "/admin/payouts", query=query)
    if status != 200:
        return refused(request, status, page_)
    return page(
        request,
        "payouts.html",
        payouts=page_["data"],
        shown=status_filter,
        notice=NOTICES.get(request.query.get("notice", "")),
    )


@routes.get("/console/payouts/{payout_id}/{verb:approve|reject}")
async def confirm_review(request: web.Request) -> web.Response:
    payout_id, verb = request.match_info["payout_id"], request.match_info["verb"]
    if not PAYOUT_RE.fullmatch(payout_id):
        return page(request, "error.html", status=404, code="PAYOUT_NOT_FOUND", message="No such payout.")
    status, p = await api(request).call("GET", f"/admin/payouts/{payout_id}")
    if status != 200:
        return refused(request, status, p)
    return page(
        request,
        "confirm.html",
        title=f"{verb.capitalize()} payout {payout_id} of ${p['usd_amount']}?",
        detail="Above the two-person threshold a second finance operator must approve too."
        if verb == "approve"
        else "The tenant's revenue is released.",
        action=f"/console/payouts/{payout_id}/{verb}",
        fields={},
        reason=verb == "reject",
        button=verb.capitalize(),
        back="/console/payouts",
    )


@routes.post("/console/payouts/{payout_id}/{verb:approve|reject}")
async def review(request: web.Request) -> web.StreamResponse:
    payout_id, verb = request.match_info["payout_id"], request.match_info["verb"]
    if not PAYOUT_RE.fullmatch(payout_id):
        return page(request, "error.html", status=404, code="PAYOUT_NOT_FOUND", message="No such payout.")
    body: dict[str, Any] = {}
    if verb == "reject":
        reason = (await request.post()).get("reason")
        body["reason"] = reason if isinstance(reason, str) else ""
    status, answer = await api(request).call("POST", f"/admin/payouts/{payout_id}/{verb}", body=body)
    if status != 200:
        return refused(request, status, answer)
    return see_other(f"/console/payouts?notice={'approved' if verb == 'approve' else 'rejected'}")


@routes.get("/console/actions")
async def actions(request: web.Request) -> web.Response:
    query = {k: request.query.get(k, "") for k in ("tenant_id", "operator_id", "cursor")}
    status, log = await api(request).call("GET", "/admin/operator-actions", query={**query, "limit": "50"})
    if status != 200:
        return refused(request, status, log)
    return page(request, "actions.html", log=log["data"], next_cursor=log["next_cursor"], query=query)


def setup(sub: web.Application, keys: str) -> None:
    """The console's sub-application: templates, its keys (none: off) and its HTTP client."""
    aiohttp_jinja2.setup(sub, loader=jinja2.FileSystemLoader(str(ASSETS / "templates")), autoescape=True)
    state = State(crypto.Keyring(keys) if keys else None)
    sub[STATE] = state

    async def start(app: web.Application) -> None:
        state.http = client()

    async def stop(app: web.Application) -> None:
        if state.http is not None:
            await state.http.close()

    sub.on_startup.append(start)
    sub.on_cleanup.append(stop)


def _http(request: web.Request) -> aiohttp.ClientSession:
    http = request.app[STATE].http
    assert http is not None, "the console's client starts with the gateway"
    return http


def keyring_of(request: web.Request) -> crypto.Keyring:
    keyring = request.app[STATE].keyring
    assert keyring is not None
    return keyring


def new_idempotency_key() -> str:
    return f"console-{uuid.uuid4().hex}"
