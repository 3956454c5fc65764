"""The processor simulator's Stripe.js look-alike in Chromium, from a page on another origin: its
card iframe tokenises a card, confirmCardPayment runs the 3-D Secure challenge in an overlay, and
the frames keep a policy of their own (the REST half is tests/test_processor_sim_elements.py).

Each test runs its own simulator in-process on a free port, with a journal of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from playwright.async_api import Browser, Frame, Page

from devstack.devservers import free_port
from tests.browser_support import BROWSER_LOOP, browser, page_context, screenshot_dir, shoot
from tests.processor_sim_elements_support import PK, POLL_S, WAIT_MS, Sim, sdk, sim

__all__ = ["browser", "page_context", "screenshot_dir", "sim"]  # the fixtures, imported for this module's tests
pytestmark = BROWSER_LOOP


# -- in the browser: a page on another origin, as the gateway's checkout page is ------------------


HOST_JS = """window.changes = [];
window.stripe = Stripe(document.documentElement.dataset.pk);
window.card = stripe.elements().create('card');
card.on('change', function (e) { window.changes.push(e); });
card.on('ready', function () { window.cardReady = true; });
card.mount('#card');
"""


@contextlib.asynccontextmanager
async def host_page(s: Sim) -> AsyncIterator[str]:
    """The partner page: `http://localhost:<port>`, another origin than the simulator's 127.0.0.1,
    with the checkout page's CSP (no inline script or style; the processor's script and frames)."""
    port = free_port()
    html = f"""<!doctype html><html lang="en" data-pk="{PK}"><head><meta charset="utf-8"><title>Host</title>
<script src="{s.url}/js/v3/stripe.js"></script><script src="/host.js" defer></script></head>
<body><h1>Pay</h1><div id="card"></div></body></html>"""
    csp = f"default-src 'self'; script-src 'self' {s.url}; style-src 'self'; frame-src {s.url}; connect-src {s.url}"

    async def index(_r: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html", headers={"Content-Security-Policy": csp})

    async def script(_r: web.Request) -> web.Response:
        return web.Response(text=HOST_JS, content_type="text/javascript")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/host.js", script)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://localhost:{port}/"
    finally:
        await runner.cleanup()


async def open_host(browser: Browser, s: Sim, url: str, *, width: int = 390) -> tuple[Page, list[str]]:
    context = await browser.new_context(viewport={"width": width, "height": 844})
    page = await context.new_page()
    problems: list[str] = []
    # Every console complaint (a CSP refusal, a script error) but the 404 of the host's favicon.
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type in ("error", "warning") and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 and "favicon" not in r.url else None,
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(url)
    await until(page, "window.cardReady === true")
    return page, problems


async def until(page: Page | Frame, expression: str) -> None:
    """Poll a condition in the page. Not `wait_for_function`: its polling evaluates a string,
    which the host page's CSP (no 'unsafe-eval', as the checkout page's) refuses."""
    deadline = asyncio.get_running_loop().time() + WAIT_MS / 1000
    while not await page.evaluate(expression):
        assert asyncio.get_running_loop().time() < deadline, f"not true in {WAIT_MS} ms: {expression}"
        await asyncio.sleep(POLL_S)


CARD_FRAME = "iframe[title='Secure card payment input frame']"


async def type_card(page: Page, number: str, expiry: str = "12 / 34", cvc: str = "123") -> None:
    field = page.frame_locator(CARD_FRAME)
    await field.get_by_label("Card number").press_sequentially(number)
    await field.get_by_label("Expiry").press_sequentially(expiry)
    await field.get_by_label("CVC").press_sequentially(cvc)


async def test_the_card_field_tokenises_a_card_for_a_page_on_another_origin(
    sim: Sim, browser: Browser, screenshot_dir: pathlib.Path
) -> None:
    async with host_page(sim) as url:
        page, problems = await open_host(browser, sim, url)
        try:
            field = page.frame_locator(CARD_FRAME)
            await page.evaluate("card.focus()")
            await field.locator("#number:focus").wait_for(timeout=WAIT_MS)
            await type_card(page, "4242 4242 4242 4242")
            assert await field.get_by_label("Card number").input_value() == "4242 4242 4242 4242"
            assert await field.get_by_label("Expiry").input_value() == "12 / 34"
            await until(page, "changes.length && changes[changes.length - 1].complete")
            last = await page.evaluate("changes[changes.length - 1]")
            assert last == {"elementType": "card", "empty": False, "complete": True, "brand": "visa"}
            box = await page.locator(CARD_FRAME).bounding_box()
            assert box is not None and 56 <= box["height"] <= 90, box  # one row on a phone
            await shoot(page, screenshot_dir, "elements-card-filled")

            result = await page.evaluate("stripe.createPaymentMethod({type: 'card', card: card})")
            pm = result["paymentMethod"]
            assert pm["id"].startswith("pm_") and pm["card"]["last4"] == "4242"
            assert (pm["card"]["brand"], pm["card"]["exp_month"], pm["card"]["exp_year"]) == ("visa", 12, 2034)
            assert sim.sim.behaves_as[pm["id"]] == "pm_card_visa"
            assert ("POST", "/v1/payment_methods") in sim.sim.calls

            # A number failing Luhn: the field says so, and nothing is sent.
            await page.evaluate("card.clear()")
            await until(page, "changes[changes.length - 1].empty")
            await type_card(page, "4242 4242 4242 4241")
            error = await page.evaluate("stripe.createPaymentMethod({type: 'card', card: card})")
            assert error == {
                "error": {
                    "type": "validation_error",
                    "code": "incorrect_number",
                    "message": "Your card number is invalid.",
                }
            }
            assert await field.get_by_label("Card number").get_attribute("aria-invalid") == "true"
            changed = await page.evaluate("changes[changes.length - 1]")
            assert changed["error"]["code"] == "incorrect_number" and not changed["complete"]
            await page.evaluate("card.clear()")
            await field.get_by_label("Card number").press_sequentially("4242")
            incomplete = await page.evaluate("stripe.createPaymentMethod({type: 'card', card: card})")
            assert incomplete["error"]["code"] == "incomplete_number"
            assert len(sim.sim.payment_methods) == 1

            # 280 px wide: it still fits (two rows), nothing overflows sideways.
            await page.set_viewport_size({"width": 280, "height": 700})
            await until(page, "document.querySelector('iframe').getBoundingClientRect().height > 100")
            frame = page.frame(url=lambda u: "/elements/card" in u)
            assert frame is not None
            assert await frame.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
            await shoot(page, screenshot_dir, "elements-card-280px")
            await page.evaluate("card.unmount()")
            assert await page.locator(CARD_FRAME).count() == 0
            assert problems == []
        finally:
            await page.context.close()


@pytest.mark.parametrize(("button", "succeeds"), [("Complete authentication", True), ("Fail authentication", False)])
async def test_confirm_card_payment_runs_the_3d_secure_challenge_in_an_overlay(
    sim: Sim, browser: Browser, screenshot_dir: pathlib.Path, button: str, succeeds: bool
) -> None:
    card = await sim.new_card("4000002500003155")
    async with sdk(sim) as client:
        pi = await client.v1.payment_intents.create_async(
            params={"amount": 1000, "currency": "usd", "payment_method": card["id"], "confirm": True}
        )
    assert pi.status == "requires_action" and pi.client_secret
    async with host_page(sim) as url:
        page, problems = await open_host(browser, sim, url)
        try:
            await page.evaluate(
                "(cs) => { window.outcome = null; stripe.confirmCardPayment(cs).then(r => { window.outcome = r; }); }",
                pi.client_secret,
            )
            challenge = page.frame_locator("iframe[src*='/3ds/']")
            await challenge.get_by_text("of $10.00").wait_for(timeout=WAIT_MS)
            await shoot(page, screenshot_dir, f"elements-3ds-{'complete' if succeeds else 'fail'}")
            await challenge.get_by_role("button", name=button).click()
            await until(page, "window.outcome !== null")
            outcome = await page.evaluate("window.outcome")
            if succeeds:
                assert outcome["paymentIntent"]["status"] == "succeeded"
                assert outcome["paymentIntent"]["id"] == pi.id
            else:
                err = outcome["error"]
                assert (err["type"], err["code"]) == ("card_error", "payment_intent_authentication_failure")
                assert err["payment_intent"]["status"] == "requires_payment_method"
            assert await page.locator("iframe[src*='/3ds/']").count() == 0  # the overlay is gone
            assert sim.sim.intents[pi.id]["status"] == ("succeeded" if succeeds else "requires_payment_method")
            # An intent already settled resolves at once, without a challenge.
            again = await page.evaluate("(cs) => stripe.confirmCardPayment(cs)", pi.client_secret)
            assert ("paymentIntent" in again) is succeeds
            assert problems == []
        finally:
            await page.context.close()


async def test_the_frames_have_a_strict_policy_of_their_own_and_refuse_a_malformed_origin(sim: Sim) -> None:
    async with sim.http.get(sim.url + "/js/v3/stripe.js") as resp:
        assert resp.status == 200 and resp.content_type == "text/javascript"
        assert resp.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
        assert len(await resp.read()) < 15_000
    for path in ("/elements/card", "/3ds/challenge"):
        async with sim.http.get(sim.url + path, params={"origin": "http://localhost:8080"}) as resp:
            assert resp.status == 200
            csp = resp.headers["Content-Security-Policy"]
            # Framable by any page, as Stripe's fields are: the checkout page mounting them is itself
            # framed by a partner, and frame-ancestors judges every ancestor, the partner's too.
            assert "frame-ancestors *;" in csp and "default-src 'none'" in csp
            assert "'unsafe-inline'" not in csp
            html = await resp.text()
            assert "<script>" not in html and "style=" not in html and "http" not in html.split("<body>")[1]
        for origin in ("", "*", "javascript:alert(1)", "http://a.example; script-src *"):
            async with sim.http.get(sim.url + path, params={"origin": origin}) as resp:
                assert resp.status == 400, origin


async def test_the_card_field_loads_when_the_page_is_itself_framed_by_a_third_origin(
    sim: Sim, browser: Browser
) -> None:
    """The checkout page in the partner's iframe: partner (127.0.0.1:R) > page (localhost:Q) >
    card field (127.0.0.1:P). The card frame may not limit its ancestors to its parent's origin."""
    async with host_page(sim) as url:
        port = free_port()
        wrapper = (
            '<!doctype html><html lang="en"><head><title>Partner</title></head><body>'
            f'<iframe src="{url}" title="Checkout" width="480" height="720"></iframe></body></html>'
        )

        async def index(_r: web.Request) -> web.Response:
            return web.Response(text=wrapper, content_type="text/html")

        app = web.Application()
        app.router.add_get("/", index)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(f"http://127.0.0.1:{port}/")
            checkout = page.frame_locator("iframe[title='Checkout']")
            await checkout.frame_locator(CARD_FRAME).get_by_label("Card number").fill("4242424242424242")
            frame = page.frame(url=url)
            assert frame is not None
            await until(frame, "window.cardReady === true && changes.length > 0")
            assert (await frame.evaluate("changes[changes.length - 1]"))["brand"] == "visa"
        finally:
            await context.close()
            await runner.cleanup()
