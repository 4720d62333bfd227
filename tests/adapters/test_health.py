"""``GET /health`` and the health metrics while the store fails, through a real server."""

from __future__ import annotations

import re

import httpx
from asyncjobs.adapters.asgi import JobsApp

from asyncjobs import JanitorConfig, MemoryStore, Queue, WorkerConfig
from asyncjobs.registry import Backoff
from asyncjobs.testing import FaultyStore

from .conftest import Serve
from .support import opened, wait_until


def metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


async def test_health_is_503_with_the_reasons_while_a_loop_fails(serve: Serve) -> None:
    store = FaultyStore(MemoryStore())
    queue = Queue(
        store,  # type: ignore[arg-type]
        worker=WorkerConfig(idle_wait=0.05),
        janitor=JanitorConfig(interval=0.05),
        store_retry=Backoff(base=0.02, max=0.1),
    )
    async with opened(queue):
        base = await serve(JobsApp(queue))
        async with httpx.AsyncClient(base_url=base) as client:
            ok = await client.get("/health")
            assert (ok.status_code, ok.json()) == (200, {"status": "ok"})
            assert metric((await client.get("/metrics")).text, "asyncjobs_healthy") == 1.0

            store.fail("claim", "promote_scheduled")
            await wait_until(lambda: len(queue.health().problems) >= 2, timeout=10)
            degraded = await client.get("/health")
            assert degraded.status_code == 503
            body = degraded.json()
            assert body["status"] == "degraded"
            loops = {p["loop"]: p for p in body["problems"]}
            assert {"claim", "janitor.promote_scheduled"} <= set(loops)
            claim = loops["claim"]
            assert claim["reason"].startswith("ConnectionError")
            assert claim["failures"] >= 1 and claim["since"].endswith("+00:00")

            text = (await client.get("/metrics")).text
            assert metric(text, "asyncjobs_healthy") == 0.0
            assert metric(text, 'asyncjobs_loop_failing{loop="claim"}') == 1.0
            errors = metric(text, 'asyncjobs_store_errors_total{loop="claim"}')
            assert errors is not None and errors >= 1

            store.heal()
            await wait_until(lambda: queue.health().ok, timeout=10)
            assert (await client.get("/health")).status_code == 200
            text = (await client.get("/metrics")).text
            assert metric(text, "asyncjobs_healthy") == 1.0
            assert metric(text, 'asyncjobs_loop_failing{loop="claim"}') == 0.0
            again = metric(text, 'asyncjobs_store_errors_total{loop="claim"}')
            assert again is not None and again >= errors
