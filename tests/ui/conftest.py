"""Fixtures for the status page: the app over real HTTP, tokens, and Debian's
headless Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from sqlalchemy.orm import Session

from powerq.api import create_app
from powerq.tokens import create_token
from tests.api.helpers import live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 900}
# Hang guard for every expect(); the page refreshes every few seconds.
EXPECT_TIMEOUT_MS = 30_000
TOKEN_NAMES = {"reader": "viewer-bob", "operator": "ops-alice", "admin": "admin-carol"}

expect.set_options(timeout=EXPECT_TIMEOUT_MS)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (``apt-get install chromium``), headless."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/test does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def server(db: None) -> Iterator[str]:
    """The whole app (API and pages) on a real threaded HTTP server; its base URL."""
    with live_server(create_app()) as url:
        yield url


@pytest.fixture
def tokens(session: Session) -> dict[str, str]:
    """One plaintext token per role."""
    result = {}
    for role, name in TOKEN_NAMES.items():
        _, plaintext = create_token(session, role=role, name=name)
        result[role] = plaintext
    session.commit()
    return result


@dataclass
class Ui:
    """One browser tab on the app, and everything it asked the network for."""

    base: str
    context: BrowserContext
    page: Page
    urls: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str = "/") -> Page:
        """Go to ``path`` on the app."""
        self.page.goto(self.base + path)
        return self.page

    def sign_in(self, token: str, path: str = "/") -> Page:
        """Open ``path`` and sign in with ``token`` through the form."""
        page = self.open(path)
        page.fill("#token", token)
        page.click("#login-submit")
        expect(page.locator("#app")).to_be_visible()
        return page


def open_ui(browser: Browser, base: str) -> Ui:
    """A fresh browser context (no storage shared with other tests)."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-GB", timezone_id="UTC")
    ui = Ui(base, context, context.new_page())
    context.on("request", lambda request: ui.urls.append(request.url))
    ui.page.on("pageerror", lambda error: ui.errors.append(str(error)))
    return ui


def close_ui(ui: Ui) -> None:
    """Close the tab; fail if the page threw or asked any other origin for anything."""
    ui.context.close()
    assert not ui.errors, f"uncaught errors in the page: {ui.errors}"
    foreign = [url for url in ui.urls if not url.startswith(ui.base + "/")]
    assert not foreign, f"the page fetched from elsewhere: {foreign}"


@pytest.fixture
def ui(browser: Browser, server: str) -> Iterator[Ui]:
    """A browser tab on the live app."""
    tab = open_ui(browser, server)
    yield tab
    close_ui(tab)
