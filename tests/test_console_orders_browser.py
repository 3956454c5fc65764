"""The console's order and webhook pages in headless Chromium, through the real network: an order's
timeline and a partial refund by a finance operator (a second submit of the same confirmation is
a replay, not a second refund), a viewer shown no refund, a support operator reading a failed
delivery's attempts and sending it again, then every failed one. axe-core and screenshots as the
other console pages."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

from playwright.async_api import BrowserContext

from devstack.stack import Stack
from tests import payments_support as pay
from tests import transfers_support as ts
from tests.after_sale_support import paid
from tests.browser_support import BROWSER_LOOP, browser, page_context, screenshot_dir
from tests.helpers import eventually
from tests.test_console_browser import client, sign_in, step
from tests.test_operators import new_operator
from tests.webhooks_support import Receiver, send_test, tenant_for


def utc_today() -> str:
    return datetime.datetime.now(datetime.UTC).date().isoformat()


__all__ = ["browser", "page_context", "screenshot_dir"]  # the fixtures, imported for this module's tests
pytestmark = BROWSER_LOOP


async def test_a_finance_operator_refunds_part_of_an_order_once_from_its_timeline(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    async with client(stack) as api:
        t = await api.create_tenant()
        player, bought = await paid(api, t)
        oid = bought["order_id"]
        finance = await new_operator(api, "finance")
        page = await page_context.new_page()
        await sign_in(page, stack, finance["credential"])
        await page.goto(f"{stack.gateway_url}/console/orders")
        await page.fill("#order_id", oid)
        await page.click("form.inline button")
        await page.wait_for_url(f"**/console/orders/{oid}")
        assert await page.get_by_test_id("order-status").inner_text() == "completed"
        assert "→ completed" in await page.get_by_test_id("timeline").inner_text()
        await step(page, screenshot_dir, "order")

        await page.click("text=Refund…")
        await page.fill("#usd_amount", "4.00")
        await step(page, screenshot_dir, "refund-confirm")
        form = {
            name: await page.locator(f"main input[name={name}]").input_value()
            for name in ("csrf", "idempotency_key", "usd_amount")
        }
        await page.click("button.danger")
        await page.wait_for_url(f"**/console/orders/{oid}?notice=refunded")
        assert (await page.get_by_test_id("refunded").inner_text()).startswith("$4.00")
        assert "refund succeeded" in await page.get_by_test_id("timeline").inner_text()
        # The same confirmation submitted again (a double click, a resent form): its key replays it.
        again = await page.request.post(
            f"{stack.gateway_url}/console/orders/{oid}/refund", form={**form, "reason": "requested_by_customer"}
        )
        assert again.ok and again.url.endswith(f"/console/orders/{oid}?notice=refunded")
        await page.reload()
        assert (await page.get_by_test_id("refunded").inner_text()).startswith("$4.00")
        assert await pay.balance(api, t, player) == "60"  # 100 bought, 40 taken back once
        logged = (await api.get(f"/admin/operator-actions?operator_id={finance['operator_id']}", admin=True)).body
        assert [(a["route"], a["status"]) for a in logged["data"]][:2] == [
            ("/admin/orders/{order_id}/refunds", 200),
            ("/admin/orders/{order_id}/refunds", 201),
        ]
        viewer = await new_operator(api, "viewer")
        await page_context.clear_cookies()
        await sign_in(page, stack, viewer["credential"])
        await page.goto(f"{stack.gateway_url}/console/orders/{oid}")
        assert await page.locator("text=Refund…").count() == 0
        # The tenant's statement of today, as the partner reads it.
        await page.goto(f"{stack.gateway_url}/console/tenants/{t['tenant_id']}")
        await page.click("text=Today's statement")
        assert await page.get_by_test_id("statement-state").inner_text() == "day not over"
        partner = (await api.get(f"/api/statements/{utc_today()}", key=t["sdk_key"])).body
        movements = await page.get_by_test_id("movements").inner_text()
        for m in partner["movements"]:
            assert f"{m['account']}\t{m['kind']}\t{m['count']}\t{m['amount']}" in movements
        players = partner["balances"]["players"]
        balances = await page.get_by_test_id("balances").inner_text()
        assert f"players\t{players['opening']}\t{players['closing']}" in balances
        await step(page, screenshot_dir, "statement")


async def test_a_support_operator_reads_a_failed_delivery_and_sends_it_again(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    rx = Receiver(failing=True)  # on this module's loop, as the browser is
    await rx.start()
    try:
        await _redeliveries(stack, page_context, screenshot_dir, rx)
    finally:
        await rx.close()


async def _redeliveries(stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path, rx: Receiver) -> None:
    async with client(stack) as api:
        t = await tenant_for(api, rx)
        await send_test(api, t["sdk_key"])  # one event: one delivery, which fails

        async def failed() -> list[dict[str, Any]] | None:
            page_ = await api.get(f"/admin/webhooks/deliveries?tenant_id={t['tenant_id']}&status=failed", admin=True)
            return page_.body["data"] or None

        found = await eventually(failed, timeout_s=30)
        assert found is not None and len(found) == 1
        dead = found[0]
        support = await new_operator(api, "support")
        page = await page_context.new_page()
        await sign_in(page, stack, support["credential"])
        await page.goto(f"{stack.gateway_url}/console/webhooks?tenant_id={t['tenant_id']}&status=failed")
        assert dead["delivery_id"] in await page.get_by_test_id("deliveries").inner_text()
        await step(page, screenshot_dir, "deliveries")
        await page.click(f"text={dead['delivery_id']}")
        attempts = await page.get_by_test_id("attempts").inner_text()
        assert "500" in attempts and "receiver is down" in attempts
        await step(page, screenshot_dir, "delivery")

        rx.failing = False
        await page.click("text=Redeliver…")
        await page.click("button.danger")
        await page.wait_for_url(f"**/console/webhooks/{dead['delivery_id']}?notice=redelivered")

        async def delivered() -> bool:
            one = await api.get(f"/admin/webhooks/deliveries/{dead['delivery_id']}", admin=True)
            return one.body["status"] == "delivered"

        await eventually(delivered, timeout_s=20)
        # Every failed one since a time: none is left for this tenant, and the page says how many went.
        await page.goto(f"{stack.gateway_url}/console/webhooks-redeliver-failed?tenant_id={t['tenant_id']}")
        await page.fill("#since", "2020-01-01T00:00:00Z")
        await page.click("button.danger")
        await page.wait_for_url("**/console/webhooks?status=failed&n=0**")
        logged = (await api.get(f"/admin/operator-actions?operator_id={support['operator_id']}", admin=True)).body
        assert [a["route"] for a in logged["data"]] == [
            "/admin/webhooks/redeliver-failed",
            "/admin/webhooks/deliveries/{delivery_id}/redeliver",
        ]


async def test_a_support_operator_cancels_a_claimable_transfer_for_its_source(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    async with client(stack) as api:
        src, dst = await ts.tenants(api)
        sender = ts.email()
        await ts.fund(api, src, sender, "20")
        tid, _, _ = await ts.self_transfer_to_claimable(api, src, dst, sender, "10")
        support = await new_operator(api, "support")
        page = await page_context.new_page()
        await sign_in(page, stack, support["credential"])
        await page.goto(f"{stack.gateway_url}/console/tenants/{src['tenant_id']}")
        await page.click("text=Transfers")
        assert tid in await page.get_by_test_id("transfers").inner_text()
        await step(page, screenshot_dir, "transfers")
        await page.click(f"text={tid}")
        assert await page.get_by_test_id("transfer-status").inner_text() == "claimable"
        await page.click("text=Cancel…")
        await page.click("button.danger")
        await page.wait_for_url(f"**/transfers/{tid}?notice=cancelled")
        assert await page.get_by_test_id("transfer-status").inner_text() == "cancelled"
        assert "cancelled" in await page.get_by_test_id("history").inner_text()
        await step(page, screenshot_dir, "transfer-cancelled")
        assert await ts.balance(api, src, sender) == "20"
        # The destination's view of it has no cancel: only the source may give it up.
        await page.goto(f"{stack.gateway_url}/console/tenants/{dst['tenant_id']}/transfers/{tid}")
        assert await page.locator("text=Cancel…").count() == 0


async def test_a_viewer_finds_a_player_and_follows_an_order(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    async with client(stack) as api:
        t = await api.create_tenant()
        player, bought = await paid(api, t)
        viewer = await new_operator(api, "viewer")
        page = await page_context.new_page()
        await sign_in(page, stack, viewer["credential"])
        await page.goto(f"{stack.gateway_url}/console/tenants/{t['tenant_id']}")
        await page.fill("#player_email", player)
        await page.click("text=Find a player >> xpath=.. >> button")
        await page.wait_for_url(f"**/console/tenants/{t['tenant_id']}/player?player_email=*")
        wallet = await page.get_by_test_id("wallet").inner_text()
        assert "Balance\n100\nHeld\n0\nAvailable\n100" in wallet
        assert "currency_purchase" in await page.get_by_test_id("entries").inner_text()
        await step(page, screenshot_dir, "player")
        await page.click(f"text={bought['order_id']}")
        await page.wait_for_url(f"**/console/orders/{bought['order_id']}")
        assert await page.get_by_test_id("order-status").inner_text() == "completed"


async def test_the_disputes_page_lists_an_open_dispute_with_its_order(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    async with client(stack) as api:
        t = await api.create_tenant()
        _, bought = await paid(api, t)
        pi = (await pay.order(api, t, bought["order_id"]))["payment_intent_id"]
        await pay.sim(api, stack, "dispute", {"payment_intent": pi})
        support = await new_operator(api, "support")
        page = await page_context.new_page()
        await sign_in(page, stack, support["credential"])

        async def shown() -> bool:
            await page.goto(f"{stack.gateway_url}/console/disputes?tenant_id={t['tenant_id']}")
            return bought["order_id"] in await page.get_by_test_id("after-sale").inner_text()

        await eventually(shown, timeout_s=20)
        await step(page, screenshot_dir, "disputes")
        await page.click(f"text={bought['order_id']}")
        assert "dispute" in await page.get_by_test_id("timeline").inner_text()


async def test_an_orders_timeline_shows_its_webhook_deliveries(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    rx = Receiver()  # on this module's loop, as the browser is
    await rx.start()
    try:
        async with client(stack) as api:
            t = await tenant_for(api, rx)
            _, bought = await paid(api, t)
            viewer = await new_operator(api, "viewer")
            page = await page_context.new_page()
            await sign_in(page, stack, viewer["credential"])

            async def shown() -> bool:
                await page.goto(f"{stack.gateway_url}/console/orders/{bought['order_id']}")
                return "webhook " in await page.get_by_test_id("timeline").inner_text()

            await eventually(shown, timeout_s=20)
            await step(page, screenshot_dir, "order-webhooks")
            await page.get_by_test_id("timeline").locator("a", has_text="webhook").first.click()
            await page.wait_for_url("**/console/webhooks/whd_*")
            assert "200" in await page.get_by_test_id("attempts").inner_text()
    finally:
        await rx.close()
