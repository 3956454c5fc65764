"""Headless Chromium for the browser tests: Debian's `chromium`, steered by Playwright.

Playwright's own browser download does not work on these machines, so it launches the system's
Chromium (`INVO_CHROMIUM`, which `make test` sets; /usr/bin/chromium by default). As root Chromium
needs --no-sandbox; the other flags keep it off the network (this machine refuses outside
connections, many at a time, at every start otherwise). One browser per test module; each test
gets a fresh context (no cookies or storage shared between tests).

Screenshots go under the test session's output folder (`screenshot_dir`), one per step.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, ViewportSize, async_playwright

CHROMIUM_DEFAULT = "/usr/bin/chromium"
LAUNCH_TIMEOUT_MS = 30_000
CHROMIUM_ARGS = (
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# The seed's iframe is 480x720; phones are checked at 390x844 and desktops at 1280x800.
VIEWPORTS: dict[str, ViewportSize] = {
    "phone": {"width": 390, "height": 844},
    "desktop": {"width": 1280, "height": 800},
}


def chromium_path() -> str:
    path = os.environ.get("INVO_CHROMIUM") or CHROMIUM_DEFAULT
    if not os.access(path, os.X_OK):
        # Never a skip: `make test` installs it or stops before the tests with what to install.
        raise RuntimeError(f"Chromium is not at {path}: run the tests with `make test`, or set INVO_CHROMIUM")
    return path


# Playwright's objects belong to the event loop that made them, so the browser lives for one test
# module, on that module's loop: a module of browser tests sets `pytestmark = BROWSER_LOOP`.
BROWSER_LOOP = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    args = list(CHROMIUM_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=args, timeout=LAUNCH_TIMEOUT_MS
        )
        try:
            yield b
        finally:
            await b.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page_context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(viewport=VIEWPORTS["phone"])
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("screenshots")


async def shoot(page: Any, folder: pathlib.Path, name: str) -> pathlib.Path:
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
