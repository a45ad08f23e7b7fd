"""Browser tests of the operator console: Debian's chromium driven by Playwright (never a downloaded browser), the
console run as `creditgate console` in a child process, against a real creditgate server on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from console_browser import chromium_path
from playwright.sync_api import Browser, Playwright, sync_playwright


# Module scope, not session: Playwright's sync API keeps an event loop running in the main thread while it is
# open, and tests elsewhere that call asyncio.run must not run inside it.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # As root, chromium runs only without its sandbox; the pages it loads are the console's own.
    sandbox = ["--no-sandbox"] if os.geteuid() == 0 else []
    launched = playwright.chromium.launch(executable_path=chromium_path(), args=sandbox)
    yield launched
    launched.close()
