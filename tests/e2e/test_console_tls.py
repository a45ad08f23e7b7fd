"""The console against a server that wants TLS and API keys: the admin key in the console's settings
(CREDITGATE_CONSOLE_API_KEY), the test CA's certificate to trust."""

from __future__ import annotations

from pathlib import Path

from console_browser import ConsoleProcess, sign_in
from creditgate.client import Client
from creditgate.server.api.auth import hash_key, new_key
from creditgate.server.settings import ApiKey
from grpc import ssl_channel_credentials
from harness import RedisServer, start_server
from pki import new_pki
from playwright.sync_api import Browser, expect


def test_the_console_works_over_tls_with_an_api_key(
    browser: Browser, redis_server: RedisServer, tmp_path: Path
) -> None:
    pki = new_pki()
    files = pki.write(tmp_path)
    del files["tls_client_ca_file"]
    key = new_key()
    entry = ApiKey.model_validate({"name": "console", "sha256": hash_key(key), "scopes": ["admin", "metering"]})
    server = start_server(redis_server.url, tmp_path, api_keys=(entry,), **files)
    target = ("--target", f"127.0.0.1:{server.app.port}", "--tls-ca", str(files["tls_cert_file"].parent / "ca.pem"))
    keyed = ConsoleProcess(*target, env={"CREDITGATE_CONSOLE_API_KEY": key})
    keyless = ConsoleProcess(*target)
    context = browser.new_context()
    try:
        # The test's own calls need the key too: a customer made over TLS with the SDK.
        credentials = ssl_channel_credentials(root_certificates=pki.ca.certificate)
        with Client(f"localhost:{server.app.port}", credentials=credentials, api_key=key) as client:
            client.create_customer("tls-co", "TLS Co")
            client.create_subscription("tls-co", "basic")

        page = context.new_page()
        sign_in(page, keyed.url)
        page.goto(f"{keyed.url}/customers/tls-co")
        expect(page.locator("#available")).to_have_text("2,500")

        sign_in(page, keyless.url)
        response = page.goto(f"{keyless.url}/customers/tls-co")
        assert response is not None and response.status == 502
        expect(page.locator("#error-title")).to_have_text("The server refused the console's credentials")
        expect(page.locator("#error-reason")).to_have_text("API_KEY_MISSING")
    finally:
        context.close()
        keyed.stop()
        keyless.stop()
        server.stop()
