"""JobsApp mounted under a prefix in real hosts, the queue started by the host's lifespan.

Each host is served by uvicorn with lifespan on; each test drives REST, SSE and the
WebSocket through the prefix and checks that every URL the app emits carries it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx
from asyncjobs.adapters.asgi import (
    STATIC_DIR,
    EventStream,
    JobsApp,
    event_stream,
    serve_websocket,
)
from fastapi import FastAPI, Request, WebSocket
from httpx_sse import aconnect_sse
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.asyncio.client import connect

from asyncjobs import Queue

from .conftest import Serve
from .support import build_queue

PREFIX = "/queue"


async def exercise(base: str, prefix: str, queue: Queue) -> None:
    """Drive REST, SSE, WebSocket and the dashboard through ``prefix``."""
    assert queue.is_open, "the host's lifespan did not open the queue"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        # REST, with URLs that keep the prefix.
        assert (await client.get(f"{prefix}/health")).json() == {"status": "ok"}
        done = await client.post(f"{prefix}/jobs?wait=5", json={"type": "echo", "params": {"a": 1}})
        assert done.status_code == 200, done.text
        assert done.headers["location"] == f"{prefix}/jobs/{done.json()['id']}"
        assert (await client.get(done.headers["location"])).json()["result"] == {"a": 1}
        await client.post(f"{prefix}/jobs?wait=5", json={"type": "echo"})
        page = (await client.get(f"{prefix}/jobs", params={"limit": 1})).json()
        assert page["next"].startswith(f"{prefix}/jobs?")
        assert len((await client.get(page["next"])).json()["jobs"]) == 1
        document = (await client.get(f"{prefix}/openapi.json")).json()
        assert document["servers"] == [{"url": prefix}]

        # SSE through the prefix.
        job = await client.post(
            f"{prefix}/jobs", json={"type": "sleep", "params": {"seconds": 0.1, "steps": 2}}
        )
        with anyio.fail_after(10):
            async with aconnect_sse(client, "GET", f"{prefix}/jobs/{job.json()['id']}/events") as s:
                types = [json.loads(sse.data)["type"] async for sse in s.aiter_sse()]
        assert types[0] == "job_snapshot"
        assert types[-1] == "job_completed"

        # The dashboard at the mount root, its files relative to it.
        bare = await client.get(prefix)
        assert bare.status_code in (307, 308)
        assert bare.headers["location"].endswith(f"{prefix}/")
        index = await client.get(f"{prefix}/")
        if (STATIC_DIR / "index.html").is_file():
            assert index.status_code == 200
            assert index.headers["content-type"].startswith("text/html")
        else:
            assert index.json()["error"]["code"] == "dashboard_missing"
        if (STATIC_DIR / "app.js").is_file():
            assert (await client.get(f"{prefix}/static/app.js")).status_code == 200
        assert (await client.get(f"{prefix}/static/nope.js")).status_code == 404

    # The WebSocket through the prefix.
    async with connect(base.replace("http", "ws") + f"{prefix}/ws") as ws:
        state = json.loads(await ws.recv())
        assert state["type"] == "queue_state"
        await ws.send(json.dumps({"type": "create_job", "job_type": "echo", "request_id": 1}))
        with anyio.fail_after(5):
            while (message := json.loads(await ws.recv()))["type"] != "job_completed":
                pass
        assert message["job"]["type"] == "echo"


async def test_starlette(serve: Serve) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    queue = build_queue()
    app = Starlette(routes=[Mount(PREFIX, app=JobsApp(queue))], lifespan=queue.lifespan)
    base = await serve(app, lifespan="on")
    await exercise(base, PREFIX, queue)


async def test_fastapi_with_its_own_sse_and_websocket_routes(serve: Serve) -> None:
    # FastAPI resolves the annotations of the routes below from this module's globals.
    queue = build_queue()
    app = FastAPI(lifespan=queue.lifespan)
    app.mount(PREFIX, JobsApp(queue))

    @app.get("/mine/{job_id}/events")
    async def my_events(job_id: str, request: Request) -> EventStream:
        await queue.get(job_id)
        return EventStream(
            event_stream(queue, job_id=job_id, last_event_id=request.headers.get("last-event-id"))
        )

    @app.websocket("/mine/ws")
    async def my_ws(websocket: WebSocket) -> None:
        await serve_websocket(websocket, queue)

    base = await serve(app, lifespan="on")
    await exercise(base, PREFIX, queue)

    job = await queue.submit("sleep", {"seconds": 0.05})
    async with httpx.AsyncClient(base_url=base) as client:
        with anyio.fail_after(10):
            async with aconnect_sse(client, "GET", f"/mine/{job.id}/events") as source:
                types = [json.loads(sse.data)["type"] async for sse in source.aiter_sse()]
    assert types[-1] == "job_completed"
    async with connect(base.replace("http", "ws") + "/mine/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "queue_state"


async def test_litestar(serve: Serve) -> None:
    from litestar import Litestar, asgi

    queue = build_queue()
    jobs = JobsApp(queue)

    # Litestar strips the mount path from `path` without recording it in `root_path`;
    # add it so that the URLs JobsApp emits carry the prefix.
    @asgi(PREFIX, is_static=True, copy_scope=True)
    async def queue_app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["root_path"] = scope.get("root_path", "") + PREFIX
        await jobs(scope, receive, send)

    app = Litestar(route_handlers=[queue_app], lifespan=[queue.lifespan])
    base = await serve(app, lifespan="on")
    await exercise(base, PREFIX, queue)


def _django_app() -> ASGIApp:
    import django
    from django.conf import settings
    from django.core.asgi import get_asgi_application

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test-only-not-secret",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
        )
        django.setup()
    return get_asgi_application()


def _hello(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("hello from django")


def __getattr__(name: str) -> Any:
    # Django imports ROOT_URLCONF lazily; build the patterns only then.
    if name == "urlpatterns":
        from django.urls import path

        return [path("hello", _hello)]
    raise AttributeError(name)


def django_host(queue: Queue, prefix: str) -> Callable[[Scope, Receive, Send], Any]:
    """The asgi.py of a Django project: JobsApp under ``prefix``, Django for the rest."""
    django_app = _django_app()
    jobs = JobsApp(queue)

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # Django has no lifespan: run the queue's here
            message = await receive()
            async with queue.lifespan():
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
            assert message["type"] == "lifespan.shutdown"
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["path"] == prefix or scope["path"].startswith(prefix + "/"):
            await jobs({**scope, "root_path": scope.get("root_path", "") + prefix}, receive, send)
        else:
            await django_app(scope, receive, send)

    return application


async def test_django(serve: Serve) -> None:
    queue = build_queue()
    base = await serve(django_host(queue, PREFIX), lifespan="on")
    await exercise(base, PREFIX, queue)
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/hello")).text == "hello from django"


async def test_served_alone_behind_a_root_path(serve: Serve) -> None:
    """uvicorn --root-path /api: a proxy strips /api before the app sees the path."""
    queue = build_queue()
    base = await serve(JobsApp(queue), lifespan="on", root_path="/api")
    async with httpx.AsyncClient(base_url=base) as client:
        response = await client.post("/jobs?wait=5", json={"type": "echo"})
        assert response.status_code == 200
        assert response.headers["location"] == f"/api/jobs/{response.json()['id']}"
        document = (await client.get("/openapi.json")).json()
        assert document["servers"] == [{"url": "/api"}]
