"""Hosted checkout end to end, in headless Chromium, through the real network: the gateway's page,
the payments service, the ledger, the webhooks and the processor simulator's card field and 3-D
Secure page. Each test checks the balance, the session and order, and the webhook; every step is
screenshotted at 390x844 and 1280x800 and checked by axe-core (no serious or critical violation).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page

from devstack.devservers import free_port
from devstack.stack import Stack
from tests import checkout_browser_support as cb
from tests.browser_support import BROWSER_LOOP, VIEWPORTS, browser, page_context, screenshot_dir
from tests.helpers import Api, assert_envelope

__all__ = ["browser", "page_context", "screenshot_dir"]  # the fixtures, imported for this module's tests
pytestmark = BROWSER_LOOP


def client(stack: Stack) -> Api:
    return Api(stack.gateway_url, admin_token=stack.env["INVO_ADMIN_TOKEN"])


async def step(page: Page, shots: pathlib.Path, name: str) -> None:
    await cb.axe_clean(page, name)
    await cb.both_sizes(page, shots, name)


async def pay_new_card(page: Page, number: str, *, save: bool = True) -> None:
    await cb.state_is(page, "card")
    await cb.fill_card(page, number)
    box = page.locator("#save-card")
    if await box.is_checked() != save:
        await box.click()
    await page.click("#pay-button")


async def test_first_purchase_saves_the_card_and_the_next_one_uses_it_through_the_review_dialog(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    async with client(stack) as api:
        t = await cb.shop(api)
        email = cb.player()
        s = await cb.mint(api, t, email)
        page = await page_context.new_page()
        resp = await page.goto(s["checkout_url"])
        assert resp is not None and resp.status == 200
        headers = await resp.all_headers()
        assert headers["referrer-policy"] == "no-referrer" and headers["cache-control"] == "no-store"
        assert "frame-ancestors 'self' https://yourgame.example" in headers["content-security-policy"]
        await cb.state_is(page, "card")  # no saved card: straight to card entry
        assert await page.locator("#save-card").is_checked()  # default on
        await step(page, screenshot_dir, "01-first-purchase-card-entry")
        await cb.fill_card(page, cb.CARDS["visa"])
        await page.click("#pay-button")
        await cb.state_is(page, "success")
        assert "100" in await page.inner_text("#status")
        await step(page, screenshot_dir, "02-first-purchase-success")
        await cb.completed_once(api, stack, t, s["session_id"], email, "100")

        # The player comes back: the saved card is offered, and the review dialog guards the charge.
        s2 = await cb.mint(api, t, email, usd="5.00")
        page2 = await page_context.new_page()
        await page2.goto(s2["checkout_url"])
        await cb.state_is(page2, "select")
        card = page2.locator(".saved-card")
        assert await card.count() == 1
        text = await card.first.inner_text()
        assert "4242" in text and "12/34" in text.replace(" ", ""), text
        await step(page2, screenshot_dir, "03-returning-card-selector")
        await card.first.click()
        await cb.state_is(page2, "review")
        dialog = page2.locator("#review-dialog")
        dialog_text = await dialog.inner_text()
        for expected in ("Review Your Purchase", "$5.00", "50", "Gold Coins", "4242"):
            assert expected in dialog_text, (expected, dialog_text)
        await step(page2, screenshot_dir, "04-review-dialog")
        await page2.dblclick("#complete-purchase")  # a double click pays once
        await cb.state_is(page2, "success")
        await step(page2, screenshot_dir, "05-returning-success")
        state = await cb.session_state(api, t, s2["session_id"])
        assert state["status"] == "completed"
        assert await cb.balance(api, t, email) == "150"


async def test_a_declined_card_then_another_card(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    async with client(stack) as api:
        t = await cb.shop(api)
        email = cb.player()
        s = await cb.mint(api, t, email)
        page = await page_context.new_page()
        await page.goto(s["checkout_url"])
        await pay_new_card(page, cb.CARDS["declined"], save=True)
        await cb.state_is(page, "declined")
        assert "declined" in (await page.inner_text("#status")).lower()
        await step(page, screenshot_dir, "06-declined")
        await page.click("#try-another-card")
        await pay_new_card(page, cb.CARDS["mastercard"], save=False)
        await cb.state_is(page, "success")
        await cb.completed_once(api, stack, t, s["session_id"], email, "100")
        # Neither card was saved (the declined one never is; the other was not asked to be).
        s2 = await cb.mint(api, t, email)
        page2 = await page_context.new_page()
        await page2.goto(s2["checkout_url"])
        await cb.state_is(page2, "card")


async def test_three_d_secure_passed_and_failed_then_retried(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    async with client(stack) as api:
        t = await cb.shop(api)
        email = cb.player()
        s = await cb.mint(api, t, email)
        page = await page_context.new_page()
        await page.goto(s["checkout_url"])
        await pay_new_card(page, cb.CARDS["3ds"], save=False)
        challenge = page.frame_locator("iframe[src*='/3ds/']")
        await challenge.get_by_role("button", name="Fail authentication").wait_for()
        await cb.both_sizes(page, screenshot_dir, "07-three-d-secure-challenge")
        await challenge.get_by_role("button", name="Fail authentication").click()
        await cb.state_is(page, "declined", "failed")
        await step(page, screenshot_dir, "08-three-d-secure-failed")
        await page.click("#try-another-card")
        await pay_new_card(page, cb.CARDS["3ds"], save=False)
        await challenge.get_by_role("button", name="Complete authentication").click()
        await cb.state_is(page, "success")
        await cb.completed_once(api, stack, t, s["session_id"], email, "100")


async def test_cancel_and_the_used_expired_and_tampered_links(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    async with client(stack) as api:
        t = await cb.shop(api)
        email = cb.player()
        s = await cb.mint(api, t, email, base=stack.gateway_url)
        page = await page_context.new_page()
        await page.goto(s["checkout_url"])
        await cb.state_is(page, "card")
        await page.click("#cancel-checkout")
        await page.wait_for_url(f"{stack.gateway_url}/store/cancel", timeout=cb.STATE_TIMEOUT_MS)
        assert (await cb.session_state(api, t, s["session_id"]))["status"] == "cancelled"
        assert await cb.balance(api, t, email) == "0"

        # A paid link opened again: the 409 page; as JSON, the envelope.
        paid = await cb.mint(api, t, email)
        token = paid["checkout_url"].partition("session=")[2]
        bearer = {"Authorization": f"Bearer {token}"}
        assert (
            await api.post("/checkout/api/pay", json={"payment_method_id": "pm_card_visa"}, headers=bearer)
        ).status == 200
        resp = await page.goto(paid["checkout_url"])
        assert resp is not None and resp.status == 409
        assert "already been used" in await page.inner_text("body")
        await step(page, screenshot_dir, "09-link-already-used")
        as_json = await api.get(f"/checkout/?session={token}", headers={"Accept": "application/json"})
        assert_envelope(as_json, 409, "SESSION_ALREADY_CONSUMED")

        # A tampered token (one character of the claims changed) and one signed by another key.
        open_one = await cb.mint(api, t, email)
        head, claims, sig = open_one["checkout_url"].partition("session=")[2].split(".")
        flipped = claims[:10] + ("A" if claims[10] != "A" else "B") + claims[11:]
        resp = await page.goto(f"{stack.gateway_url}/checkout/?session={head}.{flipped}.{sig}")
        assert resp is not None and resp.status == 401
        assert "not valid" in await page.inner_text("body")
        await step(page, screenshot_dir, "10-link-not-valid")
        assert (await cb.session_state(api, t, open_one["session_id"]))["status"] == "open"
        assert await cb.balance(api, t, email) == "100"


async def test_embedded_on_another_origin_gets_exactly_one_completion_message(
    stack: Stack, browser: Browser, screenshot_dir: pathlib.Path
) -> None:
    """The partner's page (another origin: localhost, not 127.0.0.1) embeds the checkout in the
    seed's 480x720 iframe and hears INVO_CHECKOUT_COMPLETE once, from the gateway's origin."""
    port = free_port()
    partner = f"http://localhost:{port}"
    host_page = """<!doctype html><html lang="en"><head><title>Partner</title></head><body>
<h1>Partner game</h1><script src="/host.js"></script></body></html>"""
    host_js = """window.messages = [];
window.addEventListener('message', (e) => { window.messages.push({origin: e.origin, data: e.data}); });
const iframe = document.createElement('iframe');
iframe.src = new URLSearchParams(location.search).get('u');
iframe.title = 'Checkout';
iframe.style.cssText = 'width:480px; height:720px; border:0;';
document.body.appendChild(iframe);"""

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=host_page, content_type="text/html")

    async def script(request: web.Request) -> web.Response:
        return web.Response(text=host_js, content_type="text/javascript")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/host.js", script)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    context = await browser.new_context(viewport=VIEWPORTS["desktop"])
    try:
        async with client(stack) as api:
            t = await cb.shop(api)
            email = cb.player()
            s = await cb.mint(api, t, email, base=partner)
            page = await context.new_page()
            await page.goto(f"{partner}/?u={s['checkout_url']}")
            frame_el = await page.wait_for_selector("iframe")
            assert frame_el is not None
            frame = await frame_el.content_frame()
            assert frame is not None
            await frame.wait_for_selector('main#checkout[data-state="card"]', timeout=cb.STATE_TIMEOUT_MS)
            card = frame.frame_locator("#card-element iframe").first
            await card.get_by_label("Card number").fill(cb.CARDS["visa"])
            await card.get_by_label("Expiry", exact=False).fill("12 / 34")
            await card.get_by_label("CVC", exact=False).fill("123")
            await frame.click("#pay-button")
            await frame.wait_for_selector('main#checkout[data-state="success"]', timeout=cb.STATE_TIMEOUT_MS)
            await cb.both_sizes(page, screenshot_dir, "11-embedded-success")
            await cb.completed_once(api, stack, t, s["session_id"], email, "100")
            # Reloading the frame ends whatever the page had left to do; the used link then renders
            # the 409 page, which has no script: every message the checkout sent is in by now.
            await frame.goto(s["checkout_url"])
            await frame.wait_for_selector('main#checkout[data-state="completed"]', timeout=cb.STATE_TIMEOUT_MS)
            done = await _messages(page)
            assert len(done) == 1, done
            assert done[0]["origin"] == stack.gateway_url
            data: dict[str, Any] = done[0]["data"]["data"]
            assert (data["status"], data["currency_received"], data["new_balance"]) == ("success", "100", "100")
            assert page.url.startswith(partner)  # embedded: no redirect of the partner's page
    finally:
        await context.close()
        await runner.cleanup()


async def _messages(page: Page) -> list[dict[str, Any]]:
    got = await page.evaluate("() => JSON.stringify(window.messages)")
    return [
        m
        for m in json.loads(got)
        if isinstance(m.get("data"), dict) and m["data"].get("type") == "INVO_CHECKOUT_COMPLETE"
    ]


async def test_reload_and_back_mid_flow_charge_once(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    """A reload during the 3-D Secure challenge resumes it; back after paying shows the used
    page; the card is charged and the player credited once."""
    async with client(stack) as api:
        t = await cb.shop(api)
        email = cb.player()
        s = await cb.mint(api, t, email, base=stack.gateway_url)
        page = await page_context.new_page()
        await page.goto(s["checkout_url"])
        await pay_new_card(page, cb.CARDS["3ds"], save=False)
        challenge = page.frame_locator("iframe[src*='/3ds/']")
        await challenge.get_by_role("button", name="Complete authentication").wait_for()
        await page.reload()
        await challenge.get_by_role("button", name="Complete authentication").click()
        await cb.state_is(page, "success")
        await page.wait_for_url(f"{stack.gateway_url}/store/success", timeout=cb.STATE_TIMEOUT_MS)
        await page.go_back()
        await page.wait_for_selector("main#checkout[data-state='completed']", timeout=cb.STATE_TIMEOUT_MS)
        await step(page, screenshot_dir, "12-back-after-paying")
        await cb.completed_once(api, stack, t, s["session_id"], email, "100")
