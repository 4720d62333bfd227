"""Remote workers (HTTP and gRPC) beside the in-process worker, on the same store.

Drain: ``--n`` no-op jobs are queued, then timed until the last one has completed:

* ``in-process``: a Queue with ``c`` worker slots on the store, in this process;
* ``http``: a server process (JobsApp, a Queue with no workers, the store) and ``c``
  HTTP worker loops here (claim one, complete it), each on its own keep-alive
  connection through a lean HTTP/1.1 client;
* ``http-remoteworker``: ``asyncjobs.remote.RemoteWorker`` with ``c`` slots;
* ``grpc``: the same server's gRPC WorkerService and ``c`` loops on one channel.

Latency (complete-observed): one job at a time is submitted with ``POST /jobs?wait=10``
and timed until that request returns with the completed job; the worker is the
server's own in-process worker, a RemoteWorker, or a gRPC loop (one slot each).

    python benchmarks/remote_workers.py --n 2000                   # memory store
    python benchmarks/remote_workers.py --n 1000 --store sqlite

Prints one ``RESULT {json}`` line per case and a table side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, latency_summary

from asyncjobs import JanitorConfig, JobContext, Queue

#: Latency samples per case (after 20 warm-up jobs); ``--samples`` changes it.
LATENCY_SAMPLES = 200
SAMPLES = [LATENCY_SAMPLES]


def make_queue(store: Any, concurrency: int) -> Queue:
    queue = Queue(store, concurrency=concurrency, janitor=JanitorConfig(interval=0.5))

    @queue.job_type("noop", max_attempts=1)
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    return queue


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the server process ----------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    import uvicorn
    from asyncjobs.adapters.asgi import JobsApp
    from asyncjobs.adapters.grpc import start_grpc_server

    queue = make_queue(args.store_url, args.concurrency)
    async with queue:
        for _ in range(args.prefill):
            await queue.submit("noop")
        grpc_server = await start_grpc_server(queue, port=args.grpc_port)
        config = uvicorn.Config(
            JobsApp(queue), port=args.port, log_level="error", lifespan="off", access_log=False
        )
        print("READY", flush=True)
        try:
            await uvicorn.Server(config).serve()
        finally:
            await grpc_server.stop(0)


@contextlib.asynccontextmanager
async def server(
    store_url: str, *, prefill: int = 0, concurrency: int = 0
) -> AsyncIterator[tuple[str, str]]:
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the wait is off-loop
        [
            sys.executable,
            __file__,
            "--serve",
            "--store-url",
            store_url,
            "--prefill",
            str(prefill),
            "--concurrency",
            str(concurrency),
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        if line.strip() != "READY":
            raise SystemExit("the benchmark server did not start")
        url = f"http://127.0.0.1:{port}"
        import httpx

        async with httpx.AsyncClient() as client:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(url + "/health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        yield url, f"127.0.0.1:{grpc_port}"
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


# -- drains ------------------------------------------------------------------------------


async def drain_in_process(store_url: str, n: int, c: int) -> float:
    from asyncjobs import open_store

    store = open_store(store_url)
    async with make_queue(store, 0) as filler:
        for _ in range(n):
            await filler.submit("noop")
        last = (await filler.submit("noop")).id  # FIFO: done last
        started = time.perf_counter()
        async with make_queue(store, c) as queue:
            await queue.wait(last, timeout=600)
            elapsed = time.perf_counter() - started
    return elapsed * n / (n + 1)


class Http11:
    """A lean keep-alive HTTP/1.1 JSON client on asyncio streams: one connection, one
    request at a time, as a worker written in Go or Rust would run. It keeps httpx's
    own per-request cost (large on this machine) out of the server's figures."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: Any) -> Any:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        status = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        if not status.split()[1].startswith(b"2"):
            raise RuntimeError(f"{path}: {status!r} {payload!r}")
        return json.loads(payload)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def http_loops(url: str, n: int, c: int) -> float:
    done = 0
    finished = asyncio.Event()
    elapsed = 0.0
    started = time.perf_counter()

    async def loop(i: int) -> None:
        nonlocal done, elapsed
        client = Http11(url)
        try:
            while not finished.is_set():
                body = {"worker": f"bench-{i}", "limit": 1, "wait": 1}
                for claimed in (await client.post("/worker/claim", body))["jobs"]:
                    path = f"/worker/jobs/{claimed['job']['id']}/complete"
                    await client.post(path, {"token": claimed["token"], "result": None})
                    done += 1
                    if done >= n:
                        elapsed = time.perf_counter() - started
                        finished.set()
        finally:
            await client.close()

    await asyncio.gather(*(loop(i) for i in range(c)))
    return elapsed


async def grpc_loops(target: str, n: int, c: int) -> float:
    import grpc
    from asyncjobs.adapters.grpc import worker_pb2 as pb
    from asyncjobs.adapters.grpc import worker_pb2_grpc as pb_grpc

    done = 0
    finished = asyncio.Event()
    elapsed = 0.0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)

        async def loop(i: int) -> None:
            nonlocal done, elapsed
            while not finished.is_set():
                reply = await stub.Claim(pb.ClaimRequest(worker=f"bench-{i}", limit=1, wait=1))
                for claimed in reply.jobs:
                    await stub.Complete(pb.CompleteRequest(id=claimed.id, token=claimed.token))
                    done += 1
                    if done >= n:
                        elapsed = time.perf_counter() - started
                        finished.set()

        started = time.perf_counter()
        await asyncio.gather(*(loop(i) for i in range(c)))
        return elapsed


async def remote_worker_drain(url: str, n: int, c: int) -> float:
    import httpx

    from asyncjobs.remote import RemoteWorker, RemoteWorkerConfig

    worker = RemoteWorker(
        url, make_queue("memory://", 0).registry, config=RemoteWorkerConfig(concurrency=c, poll=1)
    )
    started = time.perf_counter()
    task = asyncio.create_task(worker.run())
    async with httpx.AsyncClient(base_url=url) as client:
        while True:
            stats = (await client.get("/stats")).json()
            if stats["counts"]["completed"] >= n:
                break
            await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    worker.stop()
    await task
    return elapsed


# -- latency -----------------------------------------------------------------------------


async def held_submits(url: str) -> list[float]:
    import httpx

    samples: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for i in range(20 + SAMPLES[0]):
            started = time.perf_counter()
            response = await client.post("/jobs?wait=10", json={"type": "noop"})
            elapsed = time.perf_counter() - started
            assert response.json()["status"] == "completed", response.text
            if i >= 20:
                samples.append(elapsed)
            await asyncio.sleep(0.005)
    return samples


async def with_background(run: Callable[[], Any], measure: Any) -> list[float]:
    task = asyncio.create_task(run())
    try:
        return list(await measure)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def latency_cases(store_url: Callable[[], str]) -> dict[str, list[float]]:
    import grpc
    from asyncjobs.adapters.grpc import worker_pb2 as pb
    from asyncjobs.adapters.grpc import worker_pb2_grpc as pb_grpc

    from asyncjobs.remote import RemoteWorker, RemoteWorkerConfig

    out: dict[str, list[float]] = {}
    async with server(store_url(), concurrency=1) as (url, _):
        out["in-process"] = await held_submits(url)
    async with server(store_url()) as (url, _):
        worker = RemoteWorker(
            url, make_queue("memory://", 0).registry, config=RemoteWorkerConfig(concurrency=1)
        )
        task = asyncio.create_task(worker.run())
        out["http-remoteworker"] = await held_submits(url)
        worker.stop()
        await task
    async with server(store_url()) as (url, target), grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)

        async def grpc_worker() -> None:
            while True:
                reply = await stub.Claim(pb.ClaimRequest(worker="lat", wait=30))
                for claimed in reply.jobs:
                    await stub.Complete(pb.CompleteRequest(id=claimed.id, token=claimed.token))

        out["grpc"] = await with_background(grpc_worker, held_submits(url))
    return out


# -- main ----------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    SAMPLES[0] = args.samples
    with tempfile.TemporaryDirectory(prefix="asyncjobs-bench-") as tmp:
        counter = 0

        def store_url() -> str:
            nonlocal counter
            counter += 1
            if args.store == "memory":
                return "memory://"
            return f"sqlite:///{Path(tmp) / f'jobs{counter}.db'}"

        rows: list[tuple[str, int, float]] = []
        for c in (10, 50):
            cases: dict[str, float] = {}
            cases["in-process"] = await drain_in_process(store_url(), args.n, c)
            async with server(store_url(), prefill=args.n) as (url, _):
                cases["http"] = await http_loops(url, args.n, c)
            async with server(store_url(), prefill=args.n) as (url, _):
                cases["http-remoteworker"] = await remote_worker_drain(url, args.n, c)
            async with server(store_url(), prefill=args.n) as (_, target):
                cases["grpc"] = await grpc_loops(target, args.n, c)
            for name, seconds in cases.items():
                emit(
                    system=name,
                    backend=args.store,
                    mode=f"drain_c{c}",
                    n=args.n,
                    seconds=round(seconds, 3),
                    rate=round(args.n / seconds, 1),
                )
                rows.append((f"drain c={c} {name}", args.n, args.n / seconds))
        latencies = await latency_cases(store_url)
        for name, samples in latencies.items():
            emit(
                system=name, backend=args.store, mode="latency", **latency_summary("done", samples)
            )
    print(f"\nstore={args.store} n={args.n} (pid {os.getpid()})")
    print(f"{'case':<34} {'jobs/s':>10}")
    for name, _, rate in rows:
        print(f"{name:<34} {rate:>10.0f}")
    print(f"\n{'complete-observed latency':<34} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, samples in latencies.items():
        s = latency_summary("x", samples)
        print(f"{name:<34} {s['x_p50_ms']:>8.2f} {s['x_p95_ms']:>8.2f} {s['x_p99_ms']:>8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="jobs per drain")
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--samples", type=int, default=LATENCY_SAMPLES, help="latency samples")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store-url", help=argparse.SUPPRESS)
    parser.add_argument("--prefill", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--grpc-port", type=int, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    asyncio.run(serve(parsed) if parsed.serve else main(parsed))
