"""What the gateway tests run: a small upstream app and a real nginx (Debian's) in front of it whose config is
examples/nginx.conf with the test's free ports, wrapped in a top-level config of its own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from harness import REPO, free_port

EXAMPLE_NGINX = REPO / "examples" / "nginx.conf"
EXAMPLE_ROUTES = REPO / "examples" / "routes.yaml"
# The addresses examples/nginx.conf is written with: nginx's own, the app's, creditgate's forward-auth.
EXAMPLE_LISTEN = "127.0.0.1:8080"
EXAMPLE_APP = "127.0.0.1:3000"
EXAMPLE_CREDITGATE = "127.0.0.1:8081"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class Upstream:
    """The app behind the proxy: answers 200 "upstream ok" to anything and remembers what reached it."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                body = b"upstream ok"
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    assert found, "nginx is needed for the gateway tests: Debian's nginx-light (make system-deps installs it)"
    return found


def nginx_config(prefix: Path, listen_port: int, app_port: int, creditgate_port: int, workers: int = 1) -> Path:
    """examples/nginx.conf with the given ports, in a top-level config whose files all live under prefix."""
    example = EXAMPLE_NGINX.read_text()
    for placeholder in (EXAMPLE_LISTEN, EXAMPLE_APP, EXAMPLE_CREDITGATE):
        assert placeholder in example, f"examples/nginx.conf no longer uses {placeholder}"
    site = (
        example.replace(EXAMPLE_LISTEN, f"127.0.0.1:{listen_port}")
        .replace(EXAMPLE_APP, f"127.0.0.1:{app_port}")
        .replace(EXAMPLE_CREDITGATE, f"127.0.0.1:{creditgate_port}")
    )
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "site.conf").write_text(site)
    for folder in ("logs", "temp"):
        (prefix / folder).mkdir(parents=True, exist_ok=True)
    # As root, workers run as root too: pytest's temporary folders are closed to other users.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include {prefix}/site.conf;
}}
"""
    )
    return conf


class Nginx:
    def __init__(self, prefix: Path, app_port: int, creditgate_port: int, workers: int = 1) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.conf = nginx_config(prefix, self.port, app_port, creditgate_port, workers)
        self.process = subprocess.Popen(
            [nginx_binary(), "-p", str(prefix), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=open(prefix / "logs" / "stderr.log", "ab"),  # noqa: SIM115 - the child keeps it
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {self.error_log()}") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        logs = [self.prefix / "logs" / name for name in ("error.log", "stderr.log")]
        return "\n".join(path.read_text() for path in logs if path.exists())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
