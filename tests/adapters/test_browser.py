"""A real browser's EventSource and WebSocket receive live events through the mount prefix."""

from __future__ import annotations

import os
from typing import Any

import pytest
from asyncjobs.adapters.asgi import JobsApp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

from .conftest import Serve
from .support import build_queue

CHROMIUM = "/usr/bin/chromium"

SCRIPT = """
async (jobId) => {
  const FINISHED = ["completed", "failed", "cancelled"];
  const sse = await new Promise((resolve, reject) => {
    const types = [];
    const source = new EventSource(`/queue/jobs/${jobId}/events`);
    source.onmessage = (message) => {
      const event = JSON.parse(message.data);
      types.push(event.type);
      // A finished job's stream may be its snapshot alone: close on the status, or the
      // browser reconnects when the server ends the stream.
      if (FINISHED.includes(event.job.status)) { source.close(); resolve(types); }
    };
    setTimeout(() => { source.close(); reject(new Error("SSE timeout: " + types)); }, 10000);
  });
  const ws = await new Promise((resolve, reject) => {
    const types = [];
    const socket = new WebSocket(location.origin.replace("http", "ws") + "/queue/ws");
    socket.onmessage = (message) => {
      const msg = JSON.parse(message.data);
      types.push(msg.type);
      if (msg.type === "queue_state") {
        socket.send(JSON.stringify({type: "create_job", request_id: 1, job_type: "sleep",
                                    params: {seconds: 0.2, steps: 2}}));
      } else if (msg.type === "job_completed") { socket.close(); resolve(types); }
    };
    socket.onerror = () => reject(new Error("WebSocket error"));
    setTimeout(() => reject(new Error("WebSocket timeout: " + types)), 10000);
  });
  return {sse, ws};
}
"""


def _playwright() -> Any:
    message = ""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        message = "playwright is not installed (pip install 'asyncjobs[test]')"
    else:
        if os.path.exists(CHROMIUM):
            return async_playwright
        message = f"{CHROMIUM} is missing"
    if os.environ.get("ASYNCJOBS_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


async def host_page(request: Request) -> HTMLResponse:
    return HTMLResponse("<!doctype html><title>host</title><p>host page</p>")


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_event_source_and_websocket_through_the_prefix(serve: Serve) -> None:
    async_playwright = _playwright()
    queue = build_queue()
    app = Starlette(
        routes=[Route("/", host_page), Mount("/queue", app=JobsApp(queue))],
        lifespan=queue.lifespan,
    )
    base = await serve(app, lifespan="on")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page()
            await page.goto(base + "/")
            # Submitted once the browser is up, so the stream sees it run.
            job = await queue.submit("sleep", {"seconds": 1.0, "steps": 5})
            result = await page.evaluate(SCRIPT, job.id)
        finally:
            await browser.close()
    assert result["sse"][0] == "job_snapshot"
    assert "job_progress" in result["sse"]
    assert result["sse"][-1] == "job_completed"
    assert result["ws"][0] == "queue_state"
    assert "ack" in result["ws"]
    assert "job_progress" in result["ws"]
    assert result["ws"][-1] == "job_completed"


CROSS_SITE = """
async (target) => {
  // What any web page could try against a JobsApp without auth on another origin.
  let simplePost = "sent";
  try {
    await fetch(target + "/jobs", {method: "POST", mode: "no-cors",
      headers: {"Content-Type": "text/plain"},
      body: JSON.stringify({type: "echo", params: {from: "evil"}})});
  } catch (err) { simplePost = "blocked: " + err; }
  const ws = await new Promise((resolve) => {
    const socket = new WebSocket(target.replace("http", "ws") + "/ws");
    socket.onmessage = (message) => {
      socket.send(JSON.stringify({type: "clear_completed", request_id: 1}));
      resolve("read: " + JSON.parse(message.data).type);
    };
    socket.onclose = (event) => resolve("closed " + event.code);
    setTimeout(() => resolve("timeout"), 10000);
  });
  return {simplePost, ws};
}
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_cross_site_page_can_neither_submit_nor_read_the_websocket(
    serve: Serve,
) -> None:
    async_playwright = _playwright()
    queue = build_queue()
    target = await serve(JobsApp(queue), lifespan="on")
    await queue.wait((await queue.submit("echo", {"mine": 1})).id, timeout=10)
    evil = await serve(Starlette(routes=[Route("/", host_page)]))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page()
            await page.goto(evil.replace("127.0.0.1", "localhost") + "/")
            result = await page.evaluate(CROSS_SITE, target)
        finally:
            await browser.close()
    assert not result["ws"].startswith("read"), result
    stats = await queue.stats()
    assert stats.total == 1, "the cross-site POST created a job or the WebSocket cleared one"
