"""The console's order, webhook and statement pages (console.py has the sign-in, the overview,
tenants, payouts and the action log): an order's timeline with its refund action, webhook
deliveries with every attempt, one redelivered or every failed one since a time (the sender paces
them per endpoint), and a tenant's daily statement."""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any

from aiohttp import web

from services.gateway.console import TENANT_RE, api, page, refused, see_other

ORDER_RE = re.compile(r"^ord_[0-9A-Z]{26}$")
DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DELIVERY_RE = re.compile(r"^whd_[0-9A-Z]{26}$")
REASONS = ("requested_by_customer", "duplicate", "fraudulent")
DELIVERY_FILTERS = ("tenant_id", "event_type", "status", "since", "until", "cursor")
routes = web.RouteTableDef()


def _timeline(order: dict[str, Any]) -> list[dict[str, str]]:
    """Every transition, refund, dispute and fraud warning of an order, oldest first."""
    rows = [
        {"at": h["at"], "what": f"{h['from'] or 'new'} → {h['to']}", "detail": f"{h['source']} {h['reason'] or ''}"}
        for h in order.get("history", [])
    ]
    rows += [
        {
            "at": r["created_at"],
            "what": f"refund {r['status']}",
            "detail": f"${r['usd_amount']} ({r['reason']}, {r['source']} {r.get('operator_id') or ''})",
        }
        for r in order.get("refunds", [])
    ]
    rows += [
        {"at": d["created_at"], "what": f"dispute {d['status']}", "detail": f"${d['usd_amount']} {d['reason']}"}
        for d in order.get("disputes", [])
    ]
    rows += [
        {"at": w["created_at"], "what": "early fraud warning", "detail": f"{w['fraud_type']} ({w['recommendation']})"}
        for w in order.get("fraud_warnings", [])
    ]
    return sorted(rows, key=lambda r: r["at"])


@routes.get("/console/orders")
async def order_lookup(request: web.Request) -> web.StreamResponse:
    order_id = request.query.get("order_id", "").strip()
    if ORDER_RE.fullmatch(order_id):
        return see_other(f"/console/orders/{order_id}")
    return page(request, "order_lookup.html", problem="No order has that id." if order_id else None)


@routes.get("/console/orders/{order_id}")
async def order(request: web.Request) -> web.Response:
    order_id = request.match_info["order_id"]
    if not ORDER_RE.fullmatch(order_id):
        return page(request, "error.html", status=404, code="ORDER_NOT_FOUND", message="No such order.")
    status, o = await api(request).call("GET", f"/admin/orders/{order_id}")
    if status != 200:
        return refused(request, status, o)
    timeline = _timeline(o)
    query = {"tenant_id": o["tenant_id"], "order_id": order_id, "limit": "50"}
    status, hooks = await api(request).call("GET", "/admin/webhooks/deliveries", query=query)
    if status == 200:  # the deliveries of the order's events, each linked to its attempts
        timeline += [
            {
                "at": d["created_at"],
                "what": f"webhook {d['event_type']}",
                "detail": f"{d['status']} after {d['attempts']} attempt(s)",
                "link": f"/console/webhooks/{d['delivery_id']}",
            }
            for d in hooks["data"]
        ]
        timeline.sort(key=lambda row: row["at"])
    notice = "The refund is recorded." if request.query.get("notice") == "refunded" else None
    return page(request, "order.html", o=o, timeline=timeline, notice=notice)


@routes.get("/console/orders/{order_id}/refund")
async def confirm_refund(request: web.Request) -> web.Response:
    order_id = request.match_info["order_id"]
    if not ORDER_RE.fullmatch(order_id):
        return page(request, "error.html", status=404, code="ORDER_NOT_FOUND", message="No such order.")
    status, o = await api(request).call("GET", f"/admin/orders/{order_id}")
    if status != 200:
        return refused(request, status, o)
    return page(
        request,
        "refund.html",
        o=o,
        reasons=REASONS,
        idempotency_key=f"console-{uuid.uuid4().hex}",  # one per confirmation: a second click is a replay
    )


@routes.post("/console/orders/{order_id}/refund")
async def refund(request: web.Request) -> web.StreamResponse:
    order_id = request.match_info["order_id"]
    form = await request.post()
    body: dict[str, Any] = {"reason": form.get("reason"), "idempotency_key": form.get("idempotency_key")}
    amount = form.get("usd_amount")
    if isinstance(amount, str) and amount.strip():
        body["usd_amount"] = amount.strip()
    if not ORDER_RE.fullmatch(order_id):
        return page(request, "error.html", status=404, code="ORDER_NOT_FOUND", message="No such order.")
    status, answer = await api(request).call("POST", f"/admin/orders/{order_id}/refunds", body=body)
    if status not in (200, 201):
        return refused(request, status, answer)
    return see_other(f"/console/orders/{order_id}?notice=refunded")


@routes.get("/console/webhooks")
async def deliveries(request: web.Request) -> web.Response:
    query = {k: request.query.get(k, "").strip() for k in DELIVERY_FILTERS}
    status, found = await api(request).call("GET", "/admin/webhooks/deliveries", query={**query, "limit": "50"})
    if status != 200:
        return refused(request, status, found)
    n = request.query.get("n", "")
    notice = f"{int(n)} failed deliveries are being sent again." if n.isdigit() and len(n) <= 9 else None
    return page(
        request,
        "deliveries.html",
        deliveries=found["data"],
        next_cursor=found.get("next_cursor") if found.get("has_more") else None,
        query=query,
        notice=notice,
    )


@routes.get("/console/webhooks/{delivery_id}")
async def delivery(request: web.Request) -> web.Response:
    delivery_id = request.match_info["delivery_id"]
    if not DELIVERY_RE.fullmatch(delivery_id):
        return page(request, "error.html", status=404, code="DELIVERY_NOT_FOUND", message="No such delivery.")
    status, d = await api(request).call("GET", f"/admin/webhooks/deliveries/{delivery_id}")
    if status != 200:
        return refused(request, status, d)
    notice = "Sent again: the attempts below grow as it goes." if request.query.get("notice") == "redelivered" else None
    return page(request, "delivery.html", d=d, notice=notice)


@routes.get("/console/webhooks/{delivery_id}/redeliver")
async def confirm_redeliver(request: web.Request) -> web.Response:
    delivery_id = request.match_info["delivery_id"]
    if not DELIVERY_RE.fullmatch(delivery_id):
        return page(request, "error.html", status=404, code="DELIVERY_NOT_FOUND", message="No such delivery.")
    return page(
        request,
        "confirm.html",
        title=f"Send delivery {delivery_id} again?",
        detail="The partner receives the same event again, with the same event id, signed now.",
        action=f"/console/webhooks/{delivery_id}/redeliver",
        fields={},
        button="Redeliver",
        back=f"/console/webhooks/{delivery_id}",
    )


@routes.post("/console/webhooks/{delivery_id}/redeliver")
async def redeliver(request: web.Request) -> web.StreamResponse:
    delivery_id = request.match_info["delivery_id"]
    if not DELIVERY_RE.fullmatch(delivery_id):
        return page(request, "error.html", status=404, code="DELIVERY_NOT_FOUND", message="No such delivery.")
    status, answer = await api(request).call("POST", f"/admin/webhooks/deliveries/{delivery_id}/redeliver")
    if status != 200:
        return refused(request, status, answer)
    return see_other(f"/console/webhooks/{delivery_id}?notice=redelivered")


@routes.get("/console/webhooks-redeliver-failed")
async def confirm_redeliver_failed(request: web.Request) -> web.Response:
    tenant_id, since = request.query.get("tenant_id", "").strip(), request.query.get("since", "").strip()
    whose = f"tenant {tenant_id}'s" if TENANT_RE.fullmatch(tenant_id) else "every tenant's"
    return page(
        request,
        "confirm.html",
        title=f"Send {whose} failed deliveries again?",
        detail="Every delivery that failed since the time below is sent again, at the sender's pace per endpoint.",
        action="/console/webhooks-redeliver-failed",
        fields={"tenant_id": tenant_id if TENANT_RE.fullmatch(tenant_id) else ""},
        since=since,
        button="Redeliver all",
        back="/console/webhooks",
    )


@routes.post("/console/webhooks-redeliver-failed")
async def redeliver_failed(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    tenant_id, since = form.get("tenant_id"), form.get("since")
    body: dict[str, Any] = {"since": since if isinstance(since, str) else ""}
    if isinstance(tenant_id, str) and TENANT_RE.fullmatch(tenant_id):
        body["tenant_id"] = tenant_id
    status, answer = await api(request).call("POST", "/admin/webhooks/redeliver-failed", body=body)
    if status != 200:
        return refused(request, status, answer)
    back = f"&tenant_id={body['tenant_id']}" if "tenant_id" in body else ""
    return see_other(f"/console/webhooks?status=failed&n={int(answer['redelivered'])}{back}")


@routes.get("/console/tenants/{tenant_id}/statement")
async def statement(request: web.Request) -> web.Response:
    """The tenant's daily statement, the same document the partner fetches (today's by default)."""
    tenant_id = request.match_info["tenant_id"]
    day = request.query.get("day", "") or datetime.datetime.now(datetime.UTC).date().isoformat()
    if not TENANT_RE.fullmatch(tenant_id) or not DAY_RE.fullmatch(day):
        return page(
            request, "error.html", status=400, code="INVALID_PARAMETER", message="A tenant id and a YYYY-MM-DD day."
        )
    status, s = await api(request).call("GET", f"/admin/tenants/{tenant_id}/statements/{day}")
    if status != 200:
        return refused(request, status, s)
    return page(request, "statement.html", s=s)


TRANSFER_RE = re.compile(r"^trf_[0-9A-Z]{26}$")
CANCELLABLE = ("pending_verification", "claimable")


@routes.get("/console/tenants/{tenant_id}/transfers")
async def transfers(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant_id"]
    if not TENANT_RE.fullmatch(tenant_id):
        return page(request, "error.html", status=404, code="TENANT_NOT_FOUND", message="No such tenant.")
    shown = request.query.get("status", "")
    query = {"status": shown, "starting_after": request.query.get("starting_after", ""), "limit": "50"}
    status, found = await api(request).call("GET", f"/admin/tenants/{tenant_id}/transfers", query=query)
    if status != 200:
        return refused(request, status, found)
    return page(
        request, "transfers.html", tenant_id=tenant_id, transfers=found["data"], more=found["has_more"], shown=shown
    )


@routes.get("/console/tenants/{tenant_id}/transfers/{transfer_id}")
async def transfer(request: web.Request) -> web.Response:
    tenant_id, transfer_id = request.match_info["tenant_id"], request.match_info["transfer_id"]
    if not TENANT_RE.fullmatch(tenant_id) or not TRANSFER_RE.fullmatch(transfer_id):
        return page(request, "error.html", status=404, code="TRANSFER_NOT_FOUND", message="No such transfer.")
    status, tr = await api(request).call("GET", f"/admin/tenants/{tenant_id}/transfers/{transfer_id}")
    if status != 200:
        return refused(request, status, tr)
    notice = "Cancelled: the amount and the fee are back with the sender." if request.query.get("notice") else None
    cancellable = tr["status"] in CANCELLABLE and tr["source_tenant_id"] == tenant_id
    return page(request, "transfer.html", tenant_id=tenant_id, tr=tr, cancellable=cancellable, notice=notice)


@routes.get("/console/tenants/{tenant_id}/transfers/{transfer_id}/cancel")
async def confirm_cancel(request: web.Request) -> web.Response:
    tenant_id, transfer_id = request.match_info["tenant_id"], request.match_info["transfer_id"]
    if not TENANT_RE.fullmatch(tenant_id) or not TRANSFER_RE.fullmatch(transfer_id):
        return page(request, "error.html", status=404, code="TRANSFER_NOT_FOUND", message="No such transfer.")
    back = f"/console/tenants/{tenant_id}/transfers/{transfer_id}"
    return page(
        request,
        "confirm.html",
        title=f"Cancel transfer {transfer_id}?",
        detail="On behalf of its source tenant: the amount and the fee go back to the sender, and its claim"
        " code stops working.",
        action=f"{back}/cancel",
        fields={},
        button="Cancel the transfer",
        back=back,
    )


@routes.post("/console/tenants/{tenant_id}/transfers/{transfer_id}/cancel")
async def cancel_transfer(request: web.Request) -> web.StreamResponse:
    tenant_id, transfer_id = request.match_info["tenant_id"], request.match_info["transfer_id"]
    if not TENANT_RE.fullmatch(tenant_id) or not TRANSFER_RE.fullmatch(transfer_id):
        return page(request, "error.html", status=404, code="TRANSFER_NOT_FOUND", message="No such transfer.")
    path = f"/admin/tenants/{tenant_id}/transfers/{transfer_id}/cancel"
    status, answer = await api(request).call("POST", path)
    if status != 200:
        return refused(request, status, answer)
    return see_other(f"/console/tenants/{tenant_id}/transfers/{transfer_id}?notice=cancelled")


@routes.get("/console/tenants/{tenant_id}/player")
async def player(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant_id"]
    email = request.query.get("player_email", "").strip()
    if not TENANT_RE.fullmatch(tenant_id) or not email:
        return page(
            request, "error.html", status=400, code="INVALID_PARAMETER", message="A tenant and a player's email."
        )
    status, p = await api(request).call("GET", f"/admin/tenants/{tenant_id}/player", query={"player_email": email})
    if status != 200:
        return refused(request, status, p)
    return page(request, "player.html", p=p)


@routes.get("/console/disputes")
async def disputes(request: web.Request) -> web.Response:
    open_only = request.query.get("open_only", "true")
    tenant_id = request.query.get("tenant_id", "").strip()
    query = {"open_only": "false" if open_only == "false" else "true", "limit": "100"}
    if TENANT_RE.fullmatch(tenant_id):
        query["tenant_id"] = tenant_id
    status, found = await api(request).call("GET", "/admin/disputes", query=query)
    if status != 200:
        return refused(request, status, found)
    return page(request, "disputes.html", items=found["data"], open_only=query["open_only"] == "true")
