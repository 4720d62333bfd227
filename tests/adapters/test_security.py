"""Browser defences: JSON bodies only, the Origin check, and the security headers."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import httpx
import pytest
from asyncjobs.adapters.asgi import JobsApp
from asyncjobs.adapters.asgi.app import STATIC_DIR
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from asyncjobs import Queue

from .conftest import Serve

EVIL = "http://evil.example"


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"],
)
async def test_a_body_that_is_not_declared_json_is_415(
    client: httpx.AsyncClient, queue: Queue, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    body = json.dumps({"type": "echo", "params": {"x": 1}})
    response = await client.post("/jobs", content=body, headers=headers)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert (await queue.stats()).total == 0
    ok = await client.post(
        "/jobs", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 202


async def test_state_changing_requests_from_a_foreign_origin_are_403(
    client: httpx.AsyncClient, base_url: str, queue: Queue
) -> None:
    job = await queue.submit("block")
    for method, path in [
        ("POST", "/jobs"),
        ("POST", f"/jobs/{job.id}/cancel"),
        ("DELETE", f"/jobs/{job.id}"),
        ("DELETE", "/jobs"),
    ]:
        response = await client.request(
            method,
            path,
            json={"type": "echo"},
            headers={"Origin": EVIL},
        )
        assert response.status_code == 403, (method, path)
        assert response.json()["error"]["code"] == "forbidden_origin"
    assert (await queue.get(job.id)).cancel_requested is False
    assert (await queue.stats()).total == 1
    # Reads carry no side effect (and the browser keeps their answers from other sites).
    assert (await client.get("/jobs", headers={"Origin": EVIL})).status_code == 200
    # The app's own origin and clients without Origin are served.
    own = await client.post(f"/jobs/{job.id}/cancel", headers={"Origin": base_url})
    assert own.status_code == 200
    assert (await client.post("/jobs", json={"type": "echo"})).status_code == 202
    null = await client.post("/jobs", json={"type": "echo"}, headers={"Origin": "null"})
    assert null.status_code == 403


async def test_websocket_from_a_foreign_origin_is_refused(
    serve: Serve, queue: Queue, base_url: str
) -> None:
    ws_url = base_url.replace("http", "ws") + "/ws"
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url, origin=EVIL):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403
    for origin in (None, base_url, base_url.upper()):
        kwargs = {} if origin is None else {"origin": origin}
        async with connect(ws_url, **kwargs) as ws:  # type: ignore[arg-type]
            assert json.loads(await ws.recv())["type"] == "queue_state"
    allowed = await serve(JobsApp(queue, allowed_origins=["https://app.example"]))
    async with connect(
        allowed.replace("http", "ws") + "/ws",
        origin="https://app.example:443",  # type: ignore[arg-type]
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "queue_state"
    with pytest.raises(InvalidStatus):
        async with connect(allowed.replace("http", "ws") + "/ws", origin=EVIL):  # type: ignore[arg-type]
            pass


def test_allowed_origins_must_be_origins(queue: Queue) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        JobsApp(queue, allowed_origins=["app.example.com"])


async def test_dashboard_and_api_send_security_headers(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    for response in (page, await client.get("/static/app.js"), await client.get("/jobs")):
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    api = await client.get("/jobs")
    assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    missing = await client.get("/no-such-route")
    assert missing.headers["x-content-type-options"] == "nosniff"


def test_dashboard_html_has_no_inline_script_or_handler() -> None:
    found: list[str] = []

    class Check(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            names = dict(attrs)
            if tag == "script" and not names.get("src"):
                found.append("inline <script>")
            found.extend(f"{tag} {name}=" for name in names if name.startswith("on"))
            if "style" in names:
                found.append(f"{tag} style=")

        def handle_data(self, data: str) -> None:
            pass

    Check().feed((STATIC_DIR / "index.html").read_text())
    assert found == []
