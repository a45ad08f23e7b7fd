"""What the console's browser tests share: the console in a child process, signing in, screenshots."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from harness import REPO, free_port
from playwright.sync_api import Page

PASSWORD = "correct horse battery staple"
# Written by every run; the README's copies are in docs/console/.
SCREENSHOTS = REPO / "build" / "console-screenshots"
CREDITGATE = Path(sys.executable).parent / "creditgate"


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "the console tests need Debian's chromium (make system-deps installs it)"
    return found


class ConsoleProcess:
    """`creditgate console` in a child process on a free loopback port."""

    def __init__(self, *options: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {key: value for key, value in os.environ.items() if not key.startswith("CREDITGATE_")}
        environment |= {"CREDITGATE_CONSOLE_PASSWORD": PASSWORD, "CREDITGATE_CONSOLE_SAMPLE_INTERVAL_SECONDS": "0.5"}
        environment |= env or {}
        self.log = SCREENSHOTS.parent / f"console-{self.port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(CREDITGATE), "console", "--listen", f"127.0.0.1:{self.port}", *options],
            env=environment,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/signin", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the console did not start: {self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def sign_in(page: Page, url: str, password: str = PASSWORD) -> None:
    page.goto(f"{url}/signin")
    page.get_by_label("Console password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
