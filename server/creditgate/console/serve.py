"""Starting the console: its settings, the password rule, and the web server."""

from __future__ import annotations

import secrets
from typing import Any

import uvicorn
from creditgate.console.app import build
from creditgate.console.settings import ConsoleSettings, is_loopback_listen


class ConsoleRefused(Exception):
    """The console will not start as configured; the message says why."""


def prepare(overrides: dict[str, Any]) -> tuple[ConsoleSettings, str | None]:
    """The settings (environment, then the command line's options) and, on a loopback address without a
    configured password, a one-time password generated for this run."""
    settings = ConsoleSettings(**{key: value for key, value in overrides.items() if value is not None})
    if settings.has_password:
        return settings, None
    if not is_loopback_listen(settings.listen):
        raise ConsoleRefused(
            f"--listen {settings.listen} is reachable from other machines: set CREDITGATE_CONSOLE_PASSWORD"
            " (or CREDITGATE_CONSOLE_PASSWORD_HASH) first"
        )
    return settings, secrets.token_urlsafe(12)


def run(settings: ConsoleSettings, generated_password: str | None) -> None:
    host, _, port = settings.listen.rpartition(":")
    app = build(settings, password=generated_password)
    print(f"creditgate console for {settings.target} on http://{settings.listen}/", flush=True)
    if generated_password is not None:
        print(f"no CREDITGATE_CONSOLE_PASSWORD set: sign in with {generated_password} (this run only)", flush=True)
    uvicorn.run(app, host=host.strip("[]"), port=int(port), log_level="warning", access_log=False)
