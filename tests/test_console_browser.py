"""The operators' console in headless Chromium, through the real network: sign-in with an operator's
own credential, the overview's ledger check, a tenant suspended and resumed through confirmation
pages, each action in the operator action log; a viewer who is shown no action and whose forged
one the API refuses; a form without its CSRF token; two finance operators approving a payout above
the two-person threshold. Every page is checked by axe-core and screenshotted at both sizes."""

from __future__ import annotations

import pathlib
from typing import Any

from playwright.async_api import BrowserContext, Page

from devstack.stack import Stack
from tests import checkout_browser_support as cb
from tests import payouts_support as ps
from tests.browser_support import BROWSER_LOOP, browser, page_context, screenshot_dir
from tests.helpers import Api, assert_envelope
from tests.test_operators import new_operator

__all__ = ["browser", "page_context", "screenshot_dir"]  # the fixtures, imported for this module's tests
pytestmark = BROWSER_LOOP


def client(stack: Stack) -> Api:
    return Api(stack.gateway_url, admin_token=stack.env["INVO_ADMIN_TOKEN"])


async def step(page: Page, shots: pathlib.Path, name: str) -> None:
    await cb.axe_clean(page, name)
    await cb.both_sizes(page, shots, f"console-{name}")


async def sign_in(page: Page, stack: Stack, credential: str) -> None:
    await page.goto(f"{stack.gateway_url}/console/login")
    await page.fill("#credential", credential)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{stack.gateway_url}/console/")


async def test_an_admin_signs_in_and_suspends_and_resumes_a_tenant_through_confirmations(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    async with client(stack) as api:
        t = await api.create_tenant(name="Console Game")
        admin = await new_operator(api, "admin")
        page = await page_context.new_page()
        await page.goto(f"{stack.gateway_url}/console/")  # not signed in: the sign-in page
        assert page.url.endswith("/console/login")
        await page.fill("#credential", "invo_op_" + "x" * 40)
        await page.click("button[type=submit]")
        assert await page.locator(".problem").inner_text() == "That credential is not valid."
        await step(page, screenshot_dir, "login-refused")

        await sign_in(page, stack, admin["credential"])
        assert await page.get_by_test_id("operator").inner_text() == f"{admin['operator_id']} · admin"
        assert "Balanced" in await page.get_by_test_id("ledger-ok").inner_text()
        legend = await page.get_by_test_id("legend").inner_text()
        assert "Item purchases: " in legend and "Payouts asked: " in legend
        assert await page.locator("[data-testid=volumes] rect").count() >= 1
        await step(page, screenshot_dir, "overview")

        await page.fill("#tenant_id", t["tenant_id"])
        await page.click("form.inline button")
        await page.wait_for_url(f"**/console/tenants/{t['tenant_id']}")
        assert await page.get_by_test_id("tenant-status").inner_text() == "active"
        await step(page, screenshot_dir, "tenant")

        await page.click("text=Suspend…")
        assert "Suspend tenant" in await page.locator("h1").inner_text()
        await step(page, screenshot_dir, "confirm-suspend")
        await page.click("button.danger")
        await page.wait_for_url(f"**/console/tenants/{t['tenant_id']}?notice=suspended")
        assert await page.get_by_test_id("tenant-status").inner_text() == "suspended"
        refused = await api.get("/api/tenant", key=t["sdk_key"])
        assert_envelope(refused, 403, "TENANT_SUSPENDED")
        log = await page.get_by_test_id("actions").inner_text()
        assert admin["operator_id"] in log and "PATCH /admin/tenants/{tenant_id}" in log and "200" in log
        await step(page, screenshot_dir, "suspended")

        await page.click("text=Resume…")
        await page.click("button.danger")
        await page.wait_for_url(f"**/console/tenants/{t['tenant_id']}?notice=active")
        assert (await api.get("/api/tenant", key=t["sdk_key"])).status == 200

        await page.click("text=Sign out")
        await page.wait_for_url("**/console/login")
        await page.goto(f"{stack.gateway_url}/console/")
        assert page.url.endswith("/console/login")


async def test_a_viewer_is_shown_no_action_and_the_api_refuses_a_forged_one(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    async with client(stack) as api:
        t = await api.create_tenant(name="Viewed Game")
        viewer = await new_operator(api, "viewer")
        page = await page_context.new_page()
        await sign_in(page, stack, viewer["credential"])
        await page.goto(f"{stack.gateway_url}/console/tenants/{t['tenant_id']}")
        assert await page.locator("text=Suspend…").count() == 0
        await step(page, screenshot_dir, "viewer-tenant")
        # The confirmation page by its address, then its button: the API refuses, the page says why.
        await page.goto(f"{stack.gateway_url}/console/tenants/{t['tenant_id']}/status?to=suspended")
        await page.click("button.danger")
        assert await page.get_by_test_id("error-code").inner_text() == "OPERATOR_ROLE_FORBIDDEN"
        await step(page, screenshot_dir, "viewer-refused")
        assert (await api.get(f"/admin/tenants/{t['tenant_id']}", admin=True)).body["status"] == "active"
        logged = (await api.get(f"/admin/operator-actions?operator_id={viewer['operator_id']}", admin=True)).body
        assert [(a["route"], a["status"]) for a in logged["data"]] == [("/admin/tenants/{tenant_id}", 403)]
        # A post without the session's CSRF token does nothing.
        forged = await page.request.post(
            f"{stack.gateway_url}/console/tenants/{t['tenant_id']}/status", form={"to": "suspended"}
        )
        assert forged.status == 403 and "CSRF_REFUSED" in await forged.text()
        assert forged.headers["content-security-policy"].startswith("default-src 'none'")


async def test_two_finance_operators_approve_a_payout_above_the_threshold(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    async with client(stack) as api:
        earning = await ps.earning_tenant(api, "200000")  # 180,000 units owed: $18,000
        asked = await ps.request(api, earning, "10000.01")  # above $10,000: two approvals
        assert asked.status == 201 and asked.body["approvals_required"] == 2, asked
        pid = asked.body["payout_id"]
        ops = [await new_operator(api, "finance") for _ in range(2)]
        for i, op in enumerate(ops):
            page: Page = await page_context.new_page()
            await page_context.clear_cookies()
            await sign_in(page, stack, op["credential"])
            await page.goto(f"{stack.gateway_url}/console/payouts?tenant_id={earning['tenant_id']}")
            row = page.locator("tr", has_text=pid)
            assert "of 2" in await row.inner_text()
            if i == 0:
                await step(page, screenshot_dir, "payouts")
            await row.locator("text=Approve…").click()
            await page.click("button.danger")
            await page.wait_for_url("**/console/payouts?notice=approved")
            await page.close()
        done = await ps.reaches(api, earning, pid, "completed")
        assert done["approvals_received"] == 2
        payout: dict[str, Any] = (await api.get(f"/admin/payouts/{pid}", admin=True)).body
        assert {a["operator_id"] for a in payout["approvals"]} == {op["operator_id"] for op in ops}
