"""Event fan-out: K subscribers while one job emits 100 progress events.

    python benchmarks/bench_fanout.py sse --k 1000       # K SSE clients on GET /events
    python benchmarks/bench_fanout.py inproc --k 1000    # K queue.subscribe() readers

``sse`` serves ``JobsApp(queue)`` under uvicorn in a child process (memory store) and
opens K raw HTTP/1.1 connections on ``/events`` from this process; ``inproc`` runs K
``queue.subscribe()`` readers in one process (no HTTP). In both, the job stamps each
progress message with ``time.perf_counter()`` (CLOCK_MONOTONIC, shared by processes on
one machine), 10 ms apart, and each subscriber records ``now - stamp`` per event.

Figures: delivery p50/p99 over every (subscriber, event) pair received, the share of
progress events delivered (the EventBus coalesces pending progress of one job to the
newest for a subscriber that falls behind: by design, not a loss; every subscriber
must see the final event), and memory per idle subscriber (tracemalloc in-process;
the server's RSS growth for SSE).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from _common import base_parser, emit, percentile, spawn

from asyncjobs import JanitorConfig, JobContext, Queue

EVENTS = 100
SPACING = 0.010
_STAMP = re.compile(rb'"message":\s*"([0-9.]+)"')


def make_queue() -> Queue:
    queue = Queue(
        "memory://", concurrency=1, janitor=JanitorConfig(interval=5.0), event_buffer=1000
    )

    @queue.job_type("ticker", max_attempts=1)
    async def ticker(ctx: JobContext, params: dict[str, Any]) -> None:
        for i in range(1, EVENTS + 1):
            await ctx.progress(i / EVENTS, repr(time.perf_counter()))
            await asyncio.sleep(SPACING)

    return queue


def summarize(
    transport: str,
    k: int,
    lat: list[float],
    got: list[int],
    finals: int,
    mem_per_sub: float,
    connect_s: float,
) -> None:
    emit(
        system="asyncjobs",
        backend="memory",
        mode=f"fanout_{transport}",
        k=k,
        n=EVENTS,
        delivery_p50_ms=round(percentile(lat, 50) * 1000, 2),
        delivery_p99_ms=round(percentile(lat, 99) * 1000, 2),
        delivered_share=round(sum(got) / (k * EVENTS), 3),
        final_seen=finals,
        bytes_per_subscriber=round(mem_per_sub),
        connect_seconds=round(connect_s, 2),
    )


async def inproc(k: int) -> None:
    queue = make_queue()
    lat: list[float] = []
    got = [0] * k
    finals = 0
    async with queue:
        ready = 0
        all_ready = asyncio.Event()
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()

        async def reader(i: int) -> None:
            nonlocal ready, finals
            async with queue.subscribe(snapshot=False) as sub:
                ready += 1
                if ready == k:
                    all_ready.set()
                async for event in sub:
                    if event.type.value == "job_progress" and event.job.message:
                        lat.append(time.perf_counter() - float(event.job.message))
                        got[i] += 1
                    elif event.type.is_final:
                        finals += 1
                        return

        start = time.perf_counter()
        tasks = [asyncio.create_task(reader(i)) for i in range(k)]
        await all_ready.wait()
        connect_s = time.perf_counter() - start
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        await queue.submit("ticker")
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    summarize("inproc", k, lat, got, finals, (held - base) / k, connect_s)


# -- SSE -------------------------------------------------------------------------------


def serve(port: int) -> None:
    """The server process: JobsApp on a memory-store queue under uvicorn."""
    import uvicorn
    from asyncjobs.adapters.asgi import JobsApp

    queue = make_queue()
    app = JobsApp(queue, dashboard=False)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=8192, lifespan="on")


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_ready(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise SystemExit("the SSE server did not start")


async def sse(k: int) -> None:
    port = free_port()
    server = spawn([sys.executable, __file__, "serve", "--port", str(port)])
    lat: list[float] = []
    got = [0] * k
    finals = 0
    try:
        await http_ready(port, time.monotonic() + 30)
        await asyncio.sleep(0.3)
        rss0 = rss_of(server.pid)
        connected = 0
        all_connected = asyncio.Event()
        request = (
            f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()

        async def client(i: int) -> None:
            nonlocal connected, finals
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
            try:
                writer.write(request)
                await reader.readuntil(b"\r\n\r\n")  # response head
                connected += 1
                if connected == k:
                    all_connected.set()
                while True:
                    line = await reader.readline()
                    if not line:
                        return
                    if not line.startswith(b"data:") and b"data:" not in line:
                        continue
                    if b'"job_progress"' in line:
                        match = _STAMP.search(line)
                        if match:
                            lat.append(time.perf_counter() - float(match.group(1)))
                            got[i] += 1
                    elif b'"job_completed"' in line:
                        finals += 1
                        return
            finally:
                writer.close()

        start = time.perf_counter()
        tasks: list[asyncio.Task[None]] = []
        for i in range(k):  # connect in waves so the listen backlog never overflows
            tasks.append(asyncio.create_task(client(i)))
            if i % 200 == 199:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(all_connected.wait(), timeout=120)
        connect_s = time.perf_counter() - start
        await asyncio.sleep(0.5)
        rss1 = rss_of(server.pid)
        body = json.dumps({"type": "ticker", "params": {}}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        status = await reader.readline()
        writer.close()
        if b" 20" not in status:
            raise SystemExit(f"POST /jobs failed: {status!r}")
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=180)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    summarize("sse", k, lat, got, finals, (rss1 - rss0) / k, connect_s)


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args.port)
    elif args.mode == "inproc":
        asyncio.run(inproc(args.k))
    elif args.mode == "sse":
        asyncio.run(sse(args.k))
    else:
        raise SystemExit(f"unknown mode {args.mode!r}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
