"""The browser toolchain the checkout tests stand on: headless Chromium (Debian's) driven by
Playwright loads the running gateway, renders what it answers, and takes a screenshot."""

from __future__ import annotations

import json
import pathlib

from playwright.async_api import Browser, BrowserContext

from devstack.stack import Stack
from tests.browser_support import BROWSER_LOOP, VIEWPORTS, browser, page_context, screenshot_dir, shoot

__all__ = ["browser", "page_context", "screenshot_dir"]  # the fixtures, imported for this module's tests
pytestmark = BROWSER_LOOP


async def test_chromium_loads_the_gateway_and_takes_a_screenshot(
    stack: Stack, page_context: BrowserContext, screenshot_dir: pathlib.Path
) -> None:
    page = await page_context.new_page()
    resp = await page.goto(stack.gateway_url + "/healthz")
    assert resp is not None and resp.status == 200
    assert json.loads(await page.inner_text("body")) == {"status": "ok"}
    shot = await shoot(page, screenshot_dir, "healthz-phone")
    assert shot.stat().st_size > 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_the_error_envelope_reaches_the_browser_with_its_status(stack: Stack, browser: Browser) -> None:
    context = await browser.new_context(viewport=VIEWPORTS["desktop"])
    try:
        page = await context.new_page()
        resp = await page.goto(stack.gateway_url + "/api/tenant")  # no SDK key
        assert resp is not None and resp.status == 401
        body = json.loads(await page.inner_text("body"))
        assert (body["status"], body["error_code"]) == ("error", "MISSING_API_KEY")
    finally:
        await context.close()
