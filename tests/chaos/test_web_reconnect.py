"""The web page in headless Chromium (Playwright) when its gateway is killed under the launcher:
the status line says it is reconnecting, with the delay and the attempt, and the page is
connected again, to a new session, once the launcher has restarted the gateway."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.e2e.test_web_page import CHROMIUM_FLAGS, CONNECTED, ensure_chromium

from .conftest import Chaos

pytestmark = pytest.mark.integration

WAIT_MS = 120_000  # a failsafe: the gateway is back in seconds


@pytest.fixture
def page(healed: Chaos) -> Iterator[Page]:
    executable = ensure_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=list(CHROMIUM_FLAGS)
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def wait_for(page: Page, condition: str) -> None:
    page.wait_for_function(
        f"() => {{ const s = window.llmvox; return {condition}; }}", timeout=WAIT_MS
    )


def test_the_page_reconnects_after_the_gateway_is_killed(healed: Chaos, page: Page) -> None:
    page.goto(f"{healed.base_url}/")
    wait_for(page, CONNECTED)
    first_session = page.evaluate("() => window.llmvox.session.id")
    pid = healed.pid("gateway")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(page, "s.connection === 'closed'")
    status = page.locator("#connection").inner_text()
    assert status.startswith("disconnected (1006) — reconnecting in 0.5 s (attempt 1)"), status
    wait_for(page, CONNECTED)
    assert page.evaluate("() => window.llmvox.session.id") != first_session
    assert page.locator("#connection").inner_text() == "connected"
