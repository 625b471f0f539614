"""Playwright on Debian's Chromium: no browser download, the system's /usr/bin/chromium."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser as PlaywrightBrowser
from playwright.sync_api import BrowserContext, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Browser:
    """One browser context (its own cookies) and a page in it."""

    context: BrowserContext
    page: Page


def executable() -> str:
    found = CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")
    if not found:
        raise AssertionError(
            "no Chromium: `make tools` installs Debian's (apt-get install chromium)"
        )
    return str(found)


@contextmanager
def chromium() -> Iterator[PlaywrightBrowser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable(), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def fresh(browser: PlaywrightBrowser, width: int = 1280, height: int = 800) -> Iterator[Browser]:
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        yield Browser(context, context.new_page())
    finally:
        context.close()
