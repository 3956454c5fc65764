"""The simulator's test controls, `/_sim/<action>`: what a test does that a bank does alone, or slowly.

- `advance` `{"payment_order_id", "to": "next" | "end"}`: make the order's next move now (or every
  move left, to its end: completed, failed, or returned), webhooks and all; answers the order.
- `return` `{"payment_order_id", "code": "R01"}`: return a completed order now with that code.
- `faults`: the next N API calls fail with 503 (`fail_next`), are held `hold_s` before they run
  (`hold_next`; a same-key retry meanwhile gets 409), or run at once but answer after `slow_s`
  (`slow_next`), each only for calls whose "METHOD /path" ends with `match`; webhooks held until
  released (`webhook_hold`), sent twice (`webhook_duplicate`) or late (`webhook_delay_s`).
- `release_webhooks` `{"order": "reverse" | "sent"}`: send the held ones (newest first by default).
- `webhooks` (GET, `?payment_order_id=`): the webhooks made (whole bodies, with their id) and each
  delivery attempt (with the HTTP status; 0: no answer).
- `state` (GET): the API calls seen, the counts on record, the faults.
- `forget_idempotency`: forget every idempotency key (as 24 hours later).
- `reset`: clear the faults and drop the held webhooks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from devstack.ach_sim.api import AchApi, Faults
from devstack.ach_sim.lifecycle import WebhookFaults
from devstack.ach_sim.orders import RETURN_REASONS

FAULT_FIELDS = {"fail_next": int, "hold_next": int, "hold_s": float, "slow_next": int, "slow_s": float, "match": str}
WEBHOOK_FAULT_FIELDS = {"webhook_hold": bool, "webhook_duplicate": bool, "webhook_delay_s": float}


def _refuse(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _faults(sim: AchApi) -> dict[str, Any]:
    hooks = {f"webhook_{k}": v for k, v in dataclasses.asdict(sim.webhook_faults).items()}
    return {**dataclasses.asdict(sim.faults), **hooks}


async def control(sim: AchApi, request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else {}
    if not isinstance(body, dict):
        return _refuse("the body must be a JSON object")
    action = request.match_info["action"]
    if action in ("advance", "return"):
        order = sim.orders.get(str(body.get("payment_order_id", "")))
        if order is None:
            return _refuse("no such payment order", 404)
        if action == "return":
            code = str(body.get("code", "R01"))
            if code not in RETURN_REASONS:
                return _refuse(f"unknown ACH return code {code}")
            if order["status"] != "completed":
                return _refuse(f"only a completed payment order can be returned; this one is {order['status']}")
            sim.force_return(order["id"], code)
            return web.json_response(order)
        to = body.get("to", "next")
        if to not in ("next", "end"):
            return _refuse("to must be next or end")
        if not sim.advance(order["id"]):
            return _refuse(f"the payment order has ended ({order['status']})", 409)
        while to == "end" and sim.advance(order["id"]):
            pass
        return web.json_response(order)
    if action == "faults":
        for name, kind in FAULT_FIELDS.items():
            if name in body:
                setattr(sim.faults, name, kind(body[name]))
        for name, kind in WEBHOOK_FAULT_FIELDS.items():
            if name in body:
                setattr(sim.webhook_faults, name.removeprefix("webhook_"), kind(body[name]))
        return web.json_response(_faults(sim))
    if action == "release_webhooks":
        released = sim.release_held(newest_first=body.get("order", "reverse") == "reverse")
        return web.json_response({"released": released})
    if action == "webhooks":
        order_id = request.query.get("payment_order_id")
        made = [e for e in sim.emitted if order_id is None or e["data"]["id"] == order_id]
        attempts = [a for a in sim.sent_webhooks if order_id is None or a["payment_order_id"] == order_id]
        return web.json_response({"webhooks": made, "attempts": attempts, "held": len(sim.held_webhooks)})
    if action == "state":
        return web.json_response(
            {
                "calls": [list(call) for call in sim.calls],
                "orders": len(sim.orders),
                "pending_moves": len(sim.transitions),
                "idempotency_keys": len(sim.idempotency),
                "faults": _faults(sim),
            }
        )
    if action == "forget_idempotency":
        forgotten = list(sim.idempotency)
        sim.idempotency.clear()
        for key in forgotten:
            sim.journal.put("idempotency", key, None)
        return web.json_response({"forgotten": len(forgotten)})
    if action == "reset":
        sim.faults = Faults()
        sim.webhook_faults = WebhookFaults()
        sim.held_webhooks.clear()
        return web.json_response({"ok": True})
    return _refuse(f"unknown control {action}", 404)
