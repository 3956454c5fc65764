"""Every operator action recorded: the admin surface's requests that are not reads.

Before the handler runs, the action (operator, route template, path parameters, the tenant and the
idempotency key it names) is recorded by the tenants service; if it cannot be, the action does not
run (503). After it, its answer (status, error code) is added. An action the operator's role does
not allow is recorded with its 403 too. The body itself is never recorded: a payout's bank account
number travels in one. `GET /admin/operator-actions` reads the log, newest first.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from aiohttp import web
from invo.v1 import tenants_pb2
from pydantic import Field

from services.common import errors, limits
from services.common.logs import request_id_var
from services.gateway import answers, declare, fields, operators, tenants_api
from services.gateway.context import ctx_of
from services.gateway.http import json_response

log = logging.getLogger("invo.gateway")
READS = ("GET", "HEAD", "OPTIONS")
BODY_PEEK_MAX = 64 * 1024  # a body read for its tenant_id and idempotency_key; larger ones are not
PRINTABLE = re.compile(r"[\x20-\x7e]{1,255}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _named(request: web.Request) -> tuple[str, str]:
    """(tenant_id, idempotency_key) the request names, in its path or its JSON body."""
    tenant_id = request.match_info.get("tenant_id", "")
    key = ""
    if request.can_read_body and (request.content_length or 0) <= BODY_PEEK_MAX:
        try:
            body = json.loads(await request.read())  # aiohttp keeps the bytes for the handler
        except Exception:
            body = None
        if isinstance(body, dict):
            tenant_id = tenant_id or _text(body.get("tenant_id"))
            key = _text(body.get("idempotency_key"))
    return tenant_id, key


def _text(value: Any) -> str:
    """A value of the body worth recording: printable ASCII, at most 255 characters, as tenant ids
    and idempotency keys are. Anything else (a NUL, a lone surrogate) is the handler's to refuse;
    the log keeps nothing of it."""
    return value if isinstance(value, str) and PRINTABLE.fullmatch(value) else ""


def is_action(request: web.Request) -> bool:
    """A request to record: not a read, and to a route that exists (a 404 or 405 runs nothing)."""
    return request.method not in READS and request.match_info.route.resource is not None


async def recorded(request: web.Request, handler: Handler, operator: operators.Operator) -> web.StreamResponse:
    """Record the action, check the operator's role, run it, record its answer."""
    resource = request.match_info.route.resource
    assert resource is not None
    ctx = ctx_of(request)
    stub = operators.cache_of(request).stub
    tenant_id, key = await _named(request)
    start = tenants_pb2.StartActionRequest(
        operator_id=operator.operator_id,
        method=request.method,
        route=resource.canonical,
        params={k: _text(v) for k, v in request.match_info.items()},
        tenant_id=_text(tenant_id),
        idempotency_key=key,
        request_id=request_id_var.get(),
    )
    try:
        action: tenants_pb2.OperatorAction = await ctx.backends.call(stub.StartAction, start)
    except errors.InvoError as exc:
        log.error("an admin action was not run: it could not be recorded (%s)", exc.error_code)
        raise errors.Unavailable("The action could not be recorded; nothing was done. Retry shortly.") from None
    status, code = 500, "INTERNAL_ERROR"
    try:
        operators.authorize(request, operator)
        resp = await handler(request)
        status, code = resp.status, _error_code(resp)
        return resp
    except errors.InvoError as exc:
        status, code = exc.http_status, exc.error_code
        raise
    except web.HTTPException as exc:
        status, code = exc.status, ""
        raise
    finally:
        finish = tenants_pb2.FinishActionRequest(action_id=action.action_id, status=status, error_code=code)
        try:
            await ctx.backends.call(stub.FinishAction, finish)
        except errors.InvoError as exc:  # the action stays in the log without its answer
            log.warning("an admin action's answer was not recorded (%s)", exc.error_code)


def _error_code(resp: web.StreamResponse) -> str:
    if resp.status < 400 or not isinstance(resp, web.Response) or not isinstance(resp.body, bytes):
        return ""
    try:
        return _text(json.loads(resp.body).get("error_code"))
    except (ValueError, AttributeError):
        return ""


# -- reading the log ---------------------------------------------------------------------------

routes = declare.Table(security=declare.OPERATOR)


class ActionsQuery(fields.Query):
    operator_id: Annotated[str, Field(pattern=r"^op_([0-9A-Z]{26}|bootstrap)$")] | None = None
    tenant_id: Annotated[str, Field(pattern=limits.TENANT_ID_PATTERN)] | None = None
    cursor: Annotated[str, Field(pattern=r"^act_[0-9A-Z]{26}$")] | None = None
    limit: Annotated[int, fields.query_int(1, 500)] | None = None


class OperatorAction(answers.Answer):
    """One admin action: who, what, about which tenant, and how it ended."""

    action_id: str
    operator_id: str
    method: str
    route: str = Field(description="The route's template, e.g. /admin/payouts/{payout_id}/approve.")
    params: dict[str, str] = Field(description="The route's path parameters.")
    tenant_id: str | None
    idempotency_key: str | None
    request_id: str
    status: int | None = Field(description="The HTTP status answered; null if the gateway stopped before it.")
    error_code: str | None
    started_at: str
    finished_at: str | None


class ActionPage(answers.Answer):
    """Operator actions, newest first, a page at a time."""

    data: list[OperatorAction]
    has_more: bool
    next_cursor: str | None


def action_json(a: tenants_pb2.OperatorAction) -> dict[str, Any]:
    return {
        "action_id": a.action_id,
        "operator_id": a.operator_id,
        "method": a.method,
        "route": a.route,
        "params": dict(a.params),
        "tenant_id": a.tenant_id or None,
        "idempotency_key": a.idempotency_key or None,
        "request_id": a.request_id,
        "status": a.status or None,
        "error_code": a.error_code or None,
        "started_at": tenants_api.iso(a.started_at),
        "finished_at": tenants_api.iso(a.finished_at) if a.HasField("finished_at") else None,
    }


@routes.declare(
    "GET",
    "/admin/operator-actions",
    summary="The operator action log: every admin action with its operator and answer, newest first.",
    query=ActionsQuery,
    answers={200: ActionPage},
)
async def list_actions(request: web.Request, query: ActionsQuery) -> web.Response:
    ctx = ctx_of(request)
    req = tenants_pb2.ListActionsRequest(
        operator_id=query.operator_id or "", tenant_id=query.tenant_id or "", cursor=query.cursor or ""
    )
    if query.limit is not None:
        req.limit = query.limit
    resp: tenants_pb2.ListActionsResponse = await ctx.backends.call(operators.cache_of(request).stub.ListActions, req)
    return json_response(
        {
            "data": [action_json(a) for a in resp.actions],
            "has_more": bool(resp.next_cursor),
            "next_cursor": resp.next_cursor or None,
        }
    )
