"""The processor simulator as a hosted checkout page meets it: cards entered in the browser
(`POST /v1/payment_methods` with the publishable key), saved cards on Customers, the intent read
by its client secret, and in Chromium the Stripe.js look-alike, its card iframe and the 3-D
Secure challenge, from a page on another origin.

Each test runs its own simulator in-process on a free port, with a journal of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import stripe
from aiohttp import web
from playwright.async_api import Browser, Frame, Page

from devstack.devservers import free_port
from devstack.processor_sim.app import Simulator, create_app
from devstack.processor_sim.state import Journal
from tests.browser_support import BROWSER_LOOP, browser, page_context, screenshot_dir, shoot

__all__ = ["browser", "page_context", "screenshot_dir"]  # the fixtures, imported for this module's tests
pytestmark = BROWSER_LOOP

SK = "sk_test_elements"
PK = "pk_test_elements"
CARD = {"card[exp_month]": "12", "card[exp_year]": "2034", "card[cvc]": "123"}
WAIT_MS = 10_000
POLL_S = 0.05


@dataclasses.dataclass
class Sim:
    sim: Simulator
    url: str
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, *, key: str = SK, data: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, dict[str, Any], Any]:
        headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
        async with self.http.request(method, self.url + path, data=data, headers=headers, **kw) as resp:
            body = await resp.json() if resp.content_type == "application/json" else {}
            return resp.status, body, resp.headers

    async def new_card(self, number: str, **fields: str) -> dict[str, Any]:
        status, body, _ = await self.call(
            "POST", "/v1/payment_methods", key=PK, data={"type": "card", "card[number]": number, **CARD, **fields}
        )
        assert status == 200, body
        return body

    async def charge(self, pm: str, **params: str) -> tuple[int, dict[str, Any]]:
        data = {"amount": "1000", "currency": "usd", "payment_method": pm, "confirm": "true", **params}
        status, body, _ = await self.call("POST", "/v1/payment_intents", data=data)
        return status, body


@contextlib.asynccontextmanager
async def running(journal: pathlib.Path) -> AsyncIterator[Sim]:
    sim = Simulator(
        secret_key=SK, webhook_secret="whsec_x", webhook_url="", journal=Journal(journal), publishable_key=PK
    )
    runner = web.AppRunner(create_app(sim), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Sim(sim, f"http://127.0.0.1:{port}", http)
    finally:
        await runner.cleanup()  # closes the simulator and its journal


@pytest_asyncio.fixture(loop_scope="module")  # the module's loop: the browser's, too
async def sim(tmp_path: pathlib.Path) -> AsyncIterator[Sim]:
    async with running(tmp_path / "state.jsonl") as s:
        yield s


@contextlib.asynccontextmanager
async def sdk(s: Sim) -> AsyncIterator[stripe.StripeClient]:
    """The `stripe` SDK as the payments service holds it: only the base address is the simulator's."""
    http = stripe.AIOHTTPClient()
    try:
        yield stripe.StripeClient(SK, base_addresses={"api": s.url}, http_client=http, max_network_retries=0)
    finally:
        await http.close_async()


# -- the REST additions ---------------------------------------------------------------------------


async def test_the_publishable_key_makes_payment_methods_and_nothing_else(sim: Sim) -> None:
    pm = await sim.new_card("4242 4242 4242 4242")
    assert pm["id"].startswith("pm_") and pm["customer"] is None
    assert {k: pm["card"][k] for k in ("brand", "last4", "exp_month", "exp_year")} == {
        "brand": "visa",
        "last4": "4242",
        "exp_month": 12,
        "exp_year": 2034,
    }
    # The secret key reads it back; the publishable key may not.
    assert (await sim.call("GET", f"/v1/payment_methods/{pm['id']}"))[1]["card"]["last4"] == "4242"
    for method, path in (
        ("GET", f"/v1/payment_methods/{pm['id']}"),
        ("POST", "/v1/payment_intents"),
        ("GET", "/v1/payment_intents"),
        ("POST", "/v1/customers"),
        ("POST", f"/v1/payment_methods/{pm['id']}/detach"),
        ("POST", "/v1/refunds"),
    ):
        status, body, _ = await sim.call(method, path, key=PK, data={"amount": "1000", "currency": "usd"})
        assert status == 401 and "publishable API key" in body["error"]["message"], (method, path, body)
    status, body, _ = await sim.call("POST", "/v1/payment_methods", key="pk_test_other", data={"type": "card"})
    assert status == 401 and body["error"]["message"] == "Invalid API Key provided."

    # A browser on another origin may call it: preflight, then the answer carries CORS.
    origin = {"Origin": "http://localhost:9"}
    async with sim.http.options(
        sim.url + "/v1/payment_methods",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
    ) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:9"
        assert resp.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    data = {"type": "card", "card[number]": "5555555555554444", **CARD}
    status, body, headers = await sim.call("POST", "/v1/payment_methods", key=PK, data=data, headers=origin)
    assert status == 200 and body["card"]["brand"] == "mastercard"
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:9"


@pytest.mark.parametrize(
    ("number", "brand", "status", "outcome"),
    [
        ("4242424242424242", "visa", 200, "succeeded"),
        ("5555555555554444", "mastercard", 200, "succeeded"),
        ("4000000000000002", "visa", 402, "generic_decline"),
        ("4000000000009995", "visa", 402, "insufficient_funds"),
        ("4000002500003155", "visa", 200, "requires_action"),
        ("4000000000003220", "visa", 200, "requires_action"),
    ],
)
async def test_a_card_number_behaves_as_the_test_card_table_says(
    sim: Sim, number: str, brand: str, status: int, outcome: str
) -> None:
    pm = await sim.new_card(number)
    assert (pm["card"]["brand"], pm["card"]["last4"]) == (brand, number[-4:])
    got, body = await sim.charge(pm["id"])
    assert got == status, body
    if status == 402:
        assert (body["error"]["type"], body["error"]["code"]) == ("card_error", "card_declined")
        assert body["error"]["decline_code"] == outcome
    else:
        assert body["status"] == outcome


@pytest.mark.parametrize(
    ("fields", "status", "kind", "code"),
    [
        ({"card[number]": "4242424242424241"}, 402, "card_error", "incorrect_number"),
        ({"card[number]": "4242"}, 402, "card_error", "incorrect_number"),
        ({"card[number]": "4242424242424242", "card[exp_year]": "2020"}, 402, "card_error", "invalid_expiry_year"),
        ({"card[number]": "4242424242424242", "card[exp_month]": "13"}, 402, "card_error", "invalid_expiry_month"),
        ({"card[number]": "4242424242424242", "card[cvc]": "12"}, 402, "card_error", "invalid_cvc"),
        ({"card[number]": ""}, 400, "invalid_request_error", None),
        ({"type": "sepa_debit", "card[number]": "4242424242424242"}, 400, "invalid_request_error", None),
    ],
)
async def test_a_wrong_card_is_refused_with_stripes_error(
    sim: Sim, fields: dict[str, str], status: int, kind: str, code: str | None
) -> None:
    got, body, _ = await sim.call("POST", "/v1/payment_methods", key=PK, data={"type": "card", **CARD, **fields})
    assert got == status, body
    assert body["error"]["type"] == kind and body["error"].get("code") == code
    assert sim.sim.payment_methods == {}


async def test_a_card_paid_with_setup_future_usage_is_saved_to_its_customer_and_listed(sim: Sim) -> None:
    async with sdk(sim) as client:
        cus = await client.v1.customers.create_async(params={"email": "p@example.com"})
        other = await client.v1.customers.create_async(params={"email": "q@example.com"})
        first, second = await sim.new_card("4242424242424242"), await sim.new_card("5555555555554444")
        not_saved, declined = await sim.new_card("4242424242424242"), await sim.new_card("4000000000000002")
        three_ds = await sim.new_card("4000002500003155")

        for pm in (first, second):
            pi = await client.v1.payment_intents.create_async(
                params={
                    "amount": 1000,
                    "currency": "usd",
                    "customer": cus.id,
                    "payment_method": pm["id"],
                    "setup_future_usage": "off_session",
                    "confirm": True,
                }
            )
            assert pi.status == "succeeded" and pi.setup_future_usage == "off_session"
        # Without setup_future_usage, or declined, or awaiting 3-D Secure: not saved (yet).
        assert (await sim.charge(not_saved["id"], customer=cus.id))[1]["status"] == "succeeded"
        status, _ = await sim.charge(declined["id"], customer=cus.id, setup_future_usage="off_session")
        assert status == 402
        status, waiting = await sim.charge(three_ds["id"], customer=cus.id, setup_future_usage="off_session")
        assert waiting["status"] == "requires_action"
        listed = await client.v1.customers.payment_methods.list_async(cus.id, params={"type": "card", "limit": 10})
        assert [pm.id for pm in listed.data] == [second["id"], first["id"]]  # newest first
        assert listed.data[0].card is not None and listed.data[0].card.last4 == "4444"

        # The challenge completed: now it is saved too.
        async with sim.http.post(
            sim.url + "/_sim/three_d_secure", json={"payment_intent": waiting["id"], "result": "complete"}
        ) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "succeeded"
        page = await client.v1.customers.payment_methods.list_async(cus.id, params={"type": "card", "limit": 2})
        assert [pm.id for pm in page.data] == [three_ds["id"], second["id"]] and page.has_more

        # A saved card pays for its own Customer only.
        status, body = await sim.charge(first["id"], customer=other.id)
        assert status == 400 and body["error"]["param"] == "payment_method", body
        assert (await sim.charge(first["id"]))[0] == 400
        with pytest.raises(stripe.InvalidRequestError):
            await client.v1.payment_intents.create_async(
                params={"amount": 1000, "currency": "usd", "customer": other.id, "payment_method": second["id"]}
            )
        assert (await sim.charge(first["id"], customer=cus.id))[1]["status"] == "succeeded"

        # Detached: no longer listed; detaching again is refused.
        detached = await client.v1.payment_methods.detach_async(first["id"])
        assert detached.customer is None
        listed = await client.v1.customers.payment_methods.list_async(cus.id, params={"type": "card"})
        assert [pm.id for pm in listed.data] == [three_ds["id"], second["id"]]
        with pytest.raises(stripe.InvalidRequestError):
            await client.v1.payment_methods.detach_async(first["id"])
        assert (await client.v1.customers.payment_methods.list_async(other.id)).data == []

        # Stripe's test ids stand for a fresh card each time: never attached, usable by anyone.
        await client.v1.payment_intents.create_async(
            params={
                "amount": 1000,
                "currency": "usd",
                "customer": cus.id,
                "payment_method": "pm_card_visa",
                "setup_future_usage": "off_session",
                "confirm": True,
            }
        )
        assert (await sim.charge("pm_card_visa", customer=other.id))[1]["status"] == "succeeded"
        assert (await sim.charge("pm_card_visa"))[1]["status"] == "succeeded"


async def test_the_browser_reads_an_intent_only_with_its_client_secret(sim: Sim) -> None:
    _, pi = await sim.charge("pm_card_authenticationRequired", **{"metadata[order]": "x"})
    path = f"/v1/payment_intents/{pi['id']}"
    origin = {"Origin": "http://localhost:9"}
    status, body, headers = await sim.call(
        "GET", path, key=PK, params={"client_secret": pi["client_secret"]}, headers=origin
    )
    assert status == 200 and body["status"] == "requires_action" and body["amount"] == 1000
    assert "metadata" not in body and "customer" not in body  # the browser's view, as Stripe's
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:9"
    for secret in ("", pi["client_secret"] + "x", "pi_other_secret_abc"):
        status, body, _ = await sim.call("GET", path, key=PK, params={"client_secret": secret})
        assert status == 400 and body["error"]["param"] == "client_secret", secret
    status, _, _ = await sim.call(
        "GET", "/v1/payment_intents/pi_unknown", key=PK, params={"client_secret": pi["client_secret"]}
    )
    assert status == 400

    # The challenge page's action: the publishable key and the client secret, once.
    form = {"payment_intent": pi["id"], "client_secret": pi["client_secret"], "result": "complete"}
    assert (await sim.call("POST", "/3ds/authenticate", key=SK, data=form))[0] == 401
    bad = {**form, "client_secret": pi["client_secret"][:-1]}
    assert (await sim.call("POST", "/3ds/authenticate", key=PK, data=bad))[0] == 400
    status, body, _ = await sim.call("POST", "/3ds/authenticate", key=PK, data=form)
    assert status == 200 and body["status"] == "succeeded"
    status, body, _ = await sim.call("POST", "/3ds/authenticate", key=PK, data=form)
    assert status == 400 and body["error"]["code"] == "payment_intent_unexpected_state"


async def test_a_cards_behaviour_survives_a_restart_and_its_number_is_never_kept(tmp_path: pathlib.Path) -> None:
    journal = tmp_path / "state.jsonl"
    async with running(journal) as first:
        declined = await first.new_card("4000000000000002", **{"card[cvc]": "987"})
        three_ds = await first.new_card("4000002500003155")
        # The secret key with an idempotency key too: its fingerprint is journaled, hashed.
        form = {"type": "card", "card[number]": "5555555555554444", **CARD}
        status, mc, _ = await first.call("POST", "/v1/payment_methods", data=form, headers={"Idempotency-Key": "k1"})
        assert status == 200
    async with running(journal) as second:
        status, body = await second.charge(declined["id"])
        assert status == 402 and body["error"]["decline_code"] == "generic_decline"
        assert (await second.charge(three_ds["id"]))[1]["status"] == "requires_action"
        assert (await second.charge(mc["id"]))[1]["status"] == "succeeded"
        replay = await second.call("POST", "/v1/payment_methods", data=form, headers={"Idempotency-Key": "k1"})
        assert replay[0] == 200 and replay[1]["id"] == mc["id"] and replay[2]["Idempotent-Replayed"] == "true"
    kept = journal.read_text()
    for number in ("4000000000000002", "4000002500003155", "5555555555554444"):
        assert number not in kept
    # As a JSON value (ids are hex, so the bare digits may turn up inside one by chance).
    assert '"cvc"' not in kept and '"987"' not in kept and "=987" not in kept


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
