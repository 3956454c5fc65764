"""The simulator's test controls, `/_sim/<action>`: what a test does that a real processor does alone.

`three_d_secure` completes or fails a 3-D Secure challenge; `faults` sets the `Faults` (the next N
calls fail with 500s, time out, or succeed but answer late; charge another amount than asked;
delay, duplicate or hold webhooks); `release_webhooks` sends the held ones (newest first unless
told otherwise); `dispute` opens or closes a dispute on a charge, `efw` raises an early fraud
warning and `refund` refunds as Stripe's dashboard would (after_sale.py); `state` lists what was
called and sent; `forget_idempotency` forgets every idempotency key (as 24 hours later),
`forget_intent` one PaymentIntent; `reset` clears the faults and the held webhooks.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from devstack.processor_sim import after_sale, three_d_secure
from devstack.processor_sim.after_sale import AfterSaleResources
from devstack.processor_sim.webhooks import Faults


async def control(sim: AfterSaleResources, request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else {}
    action = request.match_info["action"]
    if action == "three_d_secure":
        pi = sim.intents.get(body.get("payment_intent", ""))
        if pi is None or pi["status"] != "requires_action":
            return web.json_response({"error": "no payment intent awaiting 3-D Secure"}, status=400)
        # What the challenge page's buttons do (pages.py), without a browser.
        return web.json_response(three_d_secure.authenticate(sim, pi, succeed=body.get("result") != "fail"))
    if action == "faults":
        for name in ("fail_next", "timeout_next", "slow_next", "amount_delta_next", "amount_delta"):
            if name in body:
                setattr(sim.faults, name, int(body[name]))
        for name in ("timeout_s", "slow_s", "webhook_delay_s"):
            if name in body:
                setattr(sim.faults, name, float(body[name]))
        for name in ("match", "fail_match"):
            if name in body:
                setattr(sim.faults, name, str(body[name]))
        for name in ("webhook_duplicate", "webhook_hold"):
            if name in body:
                setattr(sim.faults, name, bool(body[name]))
        return web.json_response(dataclasses.asdict(sim.faults))
    if action == "release_webhooks":
        held, sim.held_webhooks = sim.held_webhooks, []
        order = list(reversed(held)) if body.get("order", "reverse") == "reverse" else held
        for event in order:
            await sim._deliver(event, 0)
        return web.json_response({"released": len(held)})
    if action in after_sale.CONTROLS:  # dispute, efw, refund
        return sim.after_sale_control(action, body)
    if action == "state":
        return web.json_response(
            {
                "calls": list(sim.calls),
                "sent_webhooks": list(sim.sent_webhooks),
                "intents": list(sim.intents.values()),
            }
        )
    if action == "forget_intent":
        # A processor that lost a PaymentIntent (or another account's key): the payments service
        # must hold the order, never make a second intent for it.
        pi_id = str(body.get("payment_intent", ""))
        if sim.intents.pop(pi_id, None) is None:
            return web.json_response({"error": "no such payment intent"}, status=400)
        sim.journal.put("intents", pi_id, None)
        return web.json_response({"forgotten": pi_id})
    if action == "forget_idempotency":
        # As if the keys' 24 hours had passed: a retry with an old key is a new request again.
        forgotten = list(sim.idempotency)
        sim.idempotency.clear()
        for key in forgotten:
            sim.journal.put("idempotency", key, None)
        return web.json_response({"forgotten": len(forgotten)})
    if action == "reset":
        sim.faults = Faults()
        sim.held_webhooks.clear()
        return web.json_response({"ok": True})
    return web.json_response({"error": f"unknown control {action}"}, status=404)
