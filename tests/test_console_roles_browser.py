"""Every console action, for every role, in headless Chromium: the button is shown exactly when the
role may take the action (the admin API's one table, `operators.PERMISSIONS`), and when it may not,
the action sent anyway through its confirmation page is refused by the API and changes nothing."""

from __future__ import annotations

import pathlib
from typing import Any

from playwright.async_api import BrowserContext, Page

from devstack.stack import Stack
from services.gateway.operators import ROLES, roles_for
from tests import payouts_support as ps
from tests import transfers_support as ts
from tests.after_sale_support import paid
from tests.browser_support import BROWSER_LOOP, browser, page_context, screenshot_dir
from tests.helpers import Api, eventually
from tests.test_console_browser import client, sign_in, step
from tests.test_operators import new_operator
from tests.webhooks_support import Receiver, tenant_for

__all__ = ["browser", "page_context", "screenshot_dir"]  # the fixtures, imported for this module's tests
pytestmark = BROWSER_LOOP


async def world(api: Api, rx: Receiver) -> dict[str, Any]:
    """One of everything an action applies to: a tenant (with an order and a failed delivery), a
    payout waiting for review, a claimable transfer."""
    t = await tenant_for(api, rx)
    _, bought = await paid(api, t)

    async def failed() -> str | None:
        page = await api.get(f"/admin/webhooks/deliveries?tenant_id={t['tenant_id']}&status=failed", admin=True)
        return page.body["data"][0]["delivery_id"] if page.body["data"] else None

    delivery = await eventually(failed, timeout_s=30)
    earning = await ps.earning_tenant(api)
    payout = (await ps.request(api, earning, "1.00")).body["payout_id"]
    src, dst = await ts.tenants(api)
    sender = ts.email()
    await ts.fund(api, src, sender, "20")
    transfer, _, _ = await ts.self_transfer_to_claimable(api, src, dst, sender, "10")
    return {
        "t": t,
        "order": bought["order_id"],
        "delivery": delivery,
        "payout": payout,
        "earning": earning["tenant_id"],
        "src": src,
        "transfer": transfer,
    }


def actions(w: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(page, button, confirm page, method, route) of every console action."""
    tid, src = w["t"]["tenant_id"], w["src"]["tenant_id"]
    return [
        (f"/console/tenants/{tid}", "Suspend…", f"/console/tenants/{tid}/status?to=suspended", "PATCH",
         "/admin/tenants/{tenant_id}"),
        (f"/console/orders/{w['order']}", "Refund…", f"/console/orders/{w['order']}/refund", "POST",
         "/admin/orders/{order_id}/refunds"),
        (f"/console/payouts?tenant_id={w['earning']}", "Approve…", f"/console/payouts/{w['payout']}/approve", "POST",
         "/admin/payouts/{payout_id}/approve"),
        (f"/console/webhooks/{w['delivery']}", "Redeliver…", f"/console/webhooks/{w['delivery']}/redeliver", "POST",
         "/admin/webhooks/deliveries/{delivery_id}/redeliver"),
        (f"/console/webhooks?tenant_id={tid}", "Redeliver every failed one…",
         f"/console/webhooks-redeliver-failed?tenant_id={tid}&since=2020-01-01T00:00:00Z", "POST",
         "/admin/webhooks/redeliver-failed"),
        (f"/console/tenants/{src}/transfers/{w['transfer']}", "Cancel…",
         f"/console/tenants/{src}/transfers/{w['transfer']}/cancel", "POST",
         "/admin/tenants/{tenant_id}/transfers/{transfer_id}/cancel"),
    ]  # fmt: skip


async def test_every_action_is_shown_to_the_roles_that_may_take_it_and_refused_to_the_others(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    rx = Receiver(failing=True)  # on this module's loop, as the browser is
    await rx.start()
    try:
        async with client(stack) as api:
            w = await world(api, rx)
            for role in ROLES:
                op = await new_operator(api, role)
                await page_context.clear_cookies()
                page: Page = await page_context.new_page()
                await sign_in(page, stack, op["credential"])
                for where, button, confirm, method, route in actions(w):
                    allowed = role in roles_for(method, route)
                    await page.goto(stack.gateway_url + where)
                    shown = await page.locator(f"a.button:has-text('{button}')").count() > 0
                    assert shown == allowed, (role, button)
                    if allowed:
                        continue
                    # Forged: its confirmation page by address, then its button. The API says no.
                    await page.goto(stack.gateway_url + confirm)
                    await page.click("main form button[type=submit]")
                    code = await page.get_by_test_id("error-code").inner_text()
                    assert code == "OPERATOR_ROLE_FORBIDDEN", (role, button, code)
                if role == "viewer":
                    await step(page, screenshot_dir, "viewer-refused-redeliver")
                await page.close()
            # Nothing the refused ones tried happened: the tenant is active, the order unrefunded, the
            # payout and the transfer where they were (admins and the allowed roles only looked).
            assert (await api.get(f"/admin/tenants/{w['t']['tenant_id']}", admin=True)).body["status"] == "active"
            assert (await api.get(f"/admin/orders/{w['order']}", admin=True)).body["usd_refunded"] == "0.00"
            assert (await api.get(f"/admin/payouts/{w['payout']}", admin=True)).body["status"] == "requested"
            assert (await ts.get(api, w["src"], w["transfer"])).body["status"] == "claimable"
    finally:
        await rx.close()
