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

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
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
    **extra: float,
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
        **extra,
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


def serve(port: int, gc_file: str | None) -> None:
    """The server process: JobsApp on a memory-store queue under uvicorn."""
    import uvicorn
    from asyncjobs.adapters.asgi import JobsApp

    queue = make_queue()
    app = JobsApp(queue, dashboard=False)
    if gc_file:
        _watch_gc(gc_file)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=8192, lifespan="on")


def _watch_gc(path: str) -> None:
    """Time the garbage collector; SIGUSR1 writes the totals so far to ``path`` (JSON)."""
    totals = {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0]}
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            totals["collections"][info["generation"]] += 1
            totals["seconds"][info["generation"]] += time.thread_time() - started[0]

    def dump(*_: object) -> None:
        with open(path + ".tmp", "w") as f:
            json.dump(totals, f)
        os.replace(path + ".tmp", path)

    gc.callbacks.append(on_gc)
    signal.signal(signal.SIGUSR1, dump)


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


async def gc_totals(server: subprocess.Popen[str], path: str) -> dict[str, list[float]]:
    """Ask the server for its GC totals (see :func:`_watch_gc`)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server.send_signal(signal.SIGUSR1)
    for _ in range(500):
        totals = _read_json(path)
        if totals is not None:
            return totals
        await asyncio.sleep(0.01)
    raise SystemExit("the server did not report its GC totals")


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


class _Reader(asyncio.Protocol):
    """A lean SSE reader: frames are split from whole reads, no await per line.

    One chunk of the chunked body holds whole frames (every server here writes frames
    whole), so splitting the byte stream on blank lines finds every frame; the chunk
    size lines between them are ignored.
    """

    def __init__(self, i: int, run: _Run) -> None:
        self.i = i
        self.run = run
        self.buf = b""
        self.head = True
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buf + data
        if self.head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self.head = False
            buf = buf[end + 4 :]
            self.run.connected()
        *frames, self.buf = buf.split(b"\n\n")
        run = self.run
        for frame in frames:
            if b'"job_progress"' in frame:
                match = _STAMP.search(frame)
                if match:
                    run.lat.append(now - float(match.group(1)))
                    run.got[self.i] += 1
            elif b'"job_completed"' in frame:
                run.finals += 1
                if not self.done.done():
                    self.done.set_result(None)
                self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Run:
    """What the K readers of one SSE run share."""

    def __init__(self, k: int, port: int) -> None:
        self.k = k
        self.lat: list[float] = []
        self.got = [0] * k
        self.finals = 0
        self.count = 0
        self.all_connected = asyncio.Event()
        self.request = (
            f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()

    def connected(self) -> None:
        self.count += 1
        if self.count == self.k:
            self.all_connected.set()


async def _lines_client(i: int, run: _Run, port: int) -> None:
    """The first reader: StreamReader.readline per line (kept to compare clients)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    try:
        writer.write(run.request)
        await reader.readuntil(b"\r\n\r\n")  # response head
        run.connected()
        while True:
            line = await reader.readline()
            if not line:
                return
            if not line.startswith(b"data:") and b"data:" not in line:
                continue
            if b'"job_progress"' in line:
                match = _STAMP.search(line)
                if match:
                    run.lat.append(time.perf_counter() - float(match.group(1)))
                    run.got[i] += 1
            elif b'"job_completed"' in line:
                run.finals += 1
                return
    finally:
        writer.close()


async def _proto_client(i: int, run: _Run, port: int) -> None:
    loop = asyncio.get_running_loop()
    _, reader = await loop.create_connection(lambda: _Reader(i, run), "127.0.0.1", port)
    await reader.done


async def sse(k: int, client: str, profile: str | None) -> None:
    port = free_port()
    gc_file = os.path.join(tempfile.gettempdir(), f"fanout-gc-{os.getpid()}.json")
    server = spawn([sys.executable, __file__, "serve", "--port", str(port), "--gc-file", gc_file])
    run = _Run(k, port)
    one = _proto_client if client == "proto" else _lines_client
    spy: subprocess.Popen[str] | None = None
    try:
        await http_ready(port, time.monotonic() + 30)
        await asyncio.sleep(0.3)
        rss0 = rss_of(server.pid)
        start = time.perf_counter()
        tasks: list[asyncio.Task[None]] = []
        for i in range(k):  # connect in waves so the listen backlog never overflows
            tasks.append(asyncio.create_task(one(i, run, port)))
            if i % 200 == 199:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(run.all_connected.wait(), timeout=120)
        connect_s = time.perf_counter() - start
        await asyncio.sleep(0.5)
        rss1 = rss_of(server.pid)
        if profile:
            spy = spawn(
                [
                    "py-spy",
                    "record",
                    "--format",
                    "raw",
                    "-r",
                    "250",
                    "-o",
                    profile,
                    "--pid",
                    str(server.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)  # py-spy attaches
        body = json.dumps({"type": "ticker", "params": {}}).encode()
        gc0 = await gc_totals(server, gc_file)
        server_cpu0 = cpu_of(server.pid)
        client_cpu0 = time.process_time()
        wall0 = time.perf_counter()
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
        phase = {
            "events_seconds": round(time.perf_counter() - wall0, 2),
            "server_cpu_seconds": round(cpu_of(server.pid) - server_cpu0, 2),
            "client_cpu_seconds": round(time.process_time() - client_cpu0, 2),
        }
        gc1 = await gc_totals(server, gc_file)
        # The server's garbage collector while events flowed: full (gen 2) collections
        # and CPU seconds in all generations.
        phase["server_gc_full"] = gc1["collections"][2] - gc0["collections"][2]
        phase["server_gc_seconds"] = round(sum(gc1["seconds"]) - sum(gc0["seconds"]), 2)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    summarize("sse", k, run.lat, run.got, run.finals, (rss1 - rss0) / k, connect_s, **phase)


def _use_uvloop() -> None:
    # The server runs on uvloop (uvicorn's default when installed); so does the client.
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--client",
        choices=["proto", "lines"],
        default="proto",
        help="SSE reader: proto (a lean protocol) or lines (readline per line, the first one)",
    )
    parser.add_argument("--gc-file", help=argparse.SUPPRESS)  # serve: where GC totals go
    parser.add_argument("--profile", help="py-spy the server while events flow (raw stacks)")
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args.port, args.gc_file)
    elif args.mode == "inproc":
        asyncio.run(inproc(args.k))
    elif args.mode == "sse":
        _use_uvloop()
        asyncio.run(sse(args.k, args.client, args.profile))
    else:
        raise SystemExit(f"unknown mode {args.mode!r}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
