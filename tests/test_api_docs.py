"""``/docs``: Swagger UI shipped in the package, under a mount prefix, with auth, no CDN,
no inline script; tried in a real headless Chromium."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli_server import clean_env, free_port
from test_dashboard import CHROMIUM, _need_browser

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TOKEN = "docs-test-token-123"

HOST_MODULE = textwrap.dedent(
    f"""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from asyncjobs.adapters.asgi import BearerTokens, JobsApp, Principal
    from asyncjobs.demo import build_demo_queue

    queue = build_demo_queue()
    auth = BearerTokens({{"{TOKEN}": Principal("docs", {{"admin"}})}})
    app = Starlette(routes=[Mount("/queue", JobsApp(queue, auth=auth))], lifespan=queue.lifespan)
    """
)


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Starlette host with JobsApp under /queue and a bearer token; yields the mount URL."""
    path = tmp_path_factory.mktemp("docshost")
    (path / "docshost.py").write_text(HOST_MODULE)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "docshost:app", "--port", str(port)],
        cwd=path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/queue"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the docs host did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_docs_page_has_no_inline_script_and_local_assets(mounted: str) -> None:
    response = httpx.get(mounted + "/docs", timeout=10)
    assert response.status_code == 200
    assert "script-src" not in response.headers["content-security-policy"]  # default 'self'
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", response.text, re.S)
    assert scripts and all('src="/queue/docs/assets/' in a and not body for a, body in scripts)
    assert "http" not in "".join(re.findall(r'(?:src|href)="([^"]*)"', response.text))
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "init.js"):
        assert httpx.get(f"{mounted}/docs/assets/{asset}", timeout=10).status_code == 200
    assert httpx.get(f"{mounted}/docs/assets/..%2Fapp.py", timeout=10).status_code == 404


def test_docs_describe_the_websocket(mounted: str) -> None:
    document = httpx.get(mounted + "/openapi.json", timeout=10).json()
    description = document["info"]["description"]
    assert "/ws" in description and "queue_state" in description and "cancel_job" in description


def test_swagger_ui_runs_a_request_with_the_token(mounted: str, tmp_path: Path) -> None:
    sync_playwright = _need_browser()
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page: Any = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(20_000)
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
        outside: list[str] = []
        page.on(
            "request",
            lambda r: (
                None if r.url.startswith(mounted.rsplit("/", 1)[0]) else outside.append(r.url)
            ),
        )
        page.goto(mounted + "/docs")
        page.wait_for_selector("#operations-default-getStats")
        page.click("button.authorize")
        page.fill(".auth-container input[type=text]", TOKEN)
        page.click(".auth-btn-wrapper button.authorize")
        page.click("button.btn-done")
        page.click("#operations-default-getStats .opblock-summary")
        page.click("#operations-default-getStats button.execute")
        status = page.locator(
            "#operations-default-getStats .live-responses-table tr.response td.response-col_status"
        )
        status.first.wait_for()
        shown = status.first.inner_text().strip()
        page.screenshot(path=str(tmp_path / "docs.png"))
        browser.close()
    # The request went to /queue/stats (the mount prefix) with the bearer token.
    assert shown.startswith("200"), shown
    assert outside == []  # nothing fetched from anywhere but this server
    assert errors == []
