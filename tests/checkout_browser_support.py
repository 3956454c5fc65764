"""What the hosted checkout's browser tests share: a shop (a tenant with high caps), minting a
session, filling the processor's card field, waiting on the page's state, axe-core, screenshots at
both sizes, and the money afterwards (balance, the session's state, the order, the webhook).

The card field is the processor's own iframe (the simulator's in tests, Stripe's in production):
the test types into it as a player would, through Playwright's frame locator.
"""

from __future__ import annotations

import json
import os
import pathlib
import uuid
from typing import Any

from playwright.async_api import Page

from devstack.stack import Stack
from tests import payments_support
from tests.browser_support import VIEWPORTS, shoot
from tests.helpers import Api, eventually
from tests.payments_support import Events

BIG = "1000000.00"
STATE_TIMEOUT_MS = 20_000
AXE_JS_DEFAULT = pathlib.Path(__file__).resolve().parent.parent / ".venv/npm/node_modules/axe-core/axe.min.js"
CARDS = {
    "visa": "4242424242424242",
    "mastercard": "5555555555554444",
    "declined": "4000000000000002",
    "3ds": "4000002500003155",
}


def axe_source() -> str:
    path = pathlib.Path(os.environ.get("INVO_AXE_JS") or AXE_JS_DEFAULT)
    if not path.is_file():
        # Never a skip: `make test` installs it (npm) before the tests run.
        raise RuntimeError(f"axe-core is not at {path}: run the tests with `make test`, or set INVO_AXE_JS")
    return path.read_text()


async def shop(api: Api, **settings: Any) -> dict[str, Any]:
    caps = {"hourly_usd": BIG, "daily_usd": BIG, "monthly_usd": BIG}
    return await api.create_tenant(currency_name="Gold Coins", spending_caps=caps, **settings)


def player() -> str:
    return f"pl-{uuid.uuid4().hex[:10]}@example.com"


async def mint(
    api: Api, t: dict[str, Any], email: str, *, usd: str = "10.00", base: str = "https://yourgame.example"
) -> dict[str, Any]:
    resp = await api.post(
        "/api/checkout/sessions",
        key=t["sdk_key"],
        json={
            "player_email": email,
            "usd_amount": usd,
            "success_url": f"{base}/store/success",
            "cancel_url": f"{base}/store/cancel",
            "metadata": {"your_user_id": "u_42", "coin_pack": "starter"},
        },
    )
    assert resp.status == 201, resp
    return dict(resp.body)


async def state_is(page: Page, *states: str) -> str:
    """Wait until the page's <main data-state> is one of `states`; returns it."""
    selector = ", ".join(f'main#checkout[data-state="{s}"]' for s in states)
    await page.wait_for_selector(selector, timeout=STATE_TIMEOUT_MS)
    return str(await page.get_attribute("main#checkout", "data-state"))


async def fill_card(page: Page, number: str, *, expiry: str = "12 / 34", cvc: str = "123") -> None:
    frame = page.frame_locator("#card-element iframe").first
    await frame.get_by_label("Card number").fill(number)
    await frame.get_by_label("Expiry", exact=False).fill(expiry)
    await frame.get_by_label("CVC", exact=False).fill(cvc)


async def axe_clean(page: Page, where: str) -> None:
    """No serious or critical axe-core violation in the page as it is now."""
    if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
        # Evaluated through the DevTools protocol: the page's CSP (rightly) refuses inline scripts.
        await page.evaluate(axe_source() + "\n;true")
    result = await page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    bad = [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"axe-core at {where}: {json.dumps(bad)}"


async def both_sizes(page: Page, folder: pathlib.Path, name: str) -> None:
    """A screenshot of the page as it is, on a phone (390x844) and a desktop (1280x800)."""
    for size, viewport in VIEWPORTS.items():
        await page.set_viewport_size(viewport)
        await shoot(page, folder, f"{name}-{size}")
    await page.set_viewport_size(VIEWPORTS["phone"])


async def session_state(api: Api, t: dict[str, Any], session_id: str) -> dict[str, Any]:
    resp = await api.get(f"/api/checkout/sessions/{session_id}", key=t["sdk_key"])
    assert resp.status == 200, resp
    return dict(resp.body)


balance = payments_support.balance  # the one balance read, under the name these tests use


async def completed_once(api: Api, stack: Stack, t: dict[str, Any], session_id: str, email: str, units: str) -> str:
    """The session is completed with one order, the player credited exactly once, and the
    ledger's entries of the tenant hold exactly one credit for this player; returns the order id."""
    found = await eventually(lambda: _completed(api, t, session_id))
    assert found is not None
    state: dict[str, Any] = found
    assert await balance(api, t, email) == units
    entries = (await api.get("/api/ledger/entries?limit=1000", key=t["sdk_key"])).body["data"]
    credits = [e for e in entries if e.get("player_email") == email and not str(e["amount"]).startswith("-")]
    assert len(credits) == 1, credits
    order = await api.get(f"/api/currency-purchases/order-details?order_id={state['order_id']}", key=t["sdk_key"])
    assert order.status == 200 and order.body["status"] == "completed", order
    assert order.body["metadata"] == {"your_user_id": "u_42", "coin_pack": "starter"}
    events = Events(stack, t["tenant_id"])
    await events.collect_until(state["order_id"], "purchase.completed")
    [completed] = events.of(state["order_id"], "purchase.completed")
    assert completed["data"]["metadata"] == {"your_user_id": "u_42", "coin_pack": "starter"}
    return str(state["order_id"])


async def _completed(api: Api, t: dict[str, Any], session_id: str) -> dict[str, Any] | None:
    state = await session_state(api, t, session_id)
    return state if state["status"] == "completed" and state["order_id"] and state["transaction_id"] else None
