"""The Redis store side by side with raw LPUSH/BRPOP and the Redis peers, in one run.

    python benchmarks/redis_compare.py --n 3000
    python benchmarks/redis_compare.py --n 3000 --peer-python /path/to/bench-venv/bin/python

Cases (each in its own process, one after the other, ``--runs`` times; medians shown):

* ``drain_c10`` / ``drain_c50``: N no-op jobs queued first, then one worker process with
  that many slots; jobs per second until the last completion is observed;
* ``enqueue``: N sequential submits from one client, per second;
* ``latency``: complete-observed p50 with an idle worker: a submitter and a worker on
  separate store connections (so the wake-up and the completion travel through Redis),
  jobs started 10 ms apart; milliseconds from submit to the submitter seeing the end.

Baseline ``raw``: LPUSH N items, then c consumers on their own connections BRPOP them
(one round trip per job, no state, no events: the floor of any Redis queue). Peers
(SAQ, streaQ, arq, taskiq) run through ``peer_*.py`` with ``--peer-python`` when their
library imports there; a peer that does not is reported as not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")


# -- the cases, run in a child process ------------------------------------------------


async def _destroy(url: str, pattern: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
    for i in range(0, len(keys), 500):
        await client.delete(*keys[i : i + 500])
    await client.aclose()


async def raw_drain(n: int, concurrency: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    key = f"bench-raw-{uuid.uuid4().hex[:8]}"
    producer = aioredis.Redis.from_url(REDIS_URL)
    for i in range(0, n, 500):
        await producer.lpush(key, *(b"{}" for _ in range(min(500, n - i))))
    left = n
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal left
        client = aioredis.Redis.from_url(REDIS_URL, single_connection_client=True)
        while left > 0:
            got = await client.brpop([key], timeout=1)
            if got is not None:
                left -= 1
                if left == 0:
                    done.set()
        await client.aclose()

    start = time.perf_counter()
    tasks = [asyncio.create_task(consume()) for _ in range(concurrency)]
    await done.wait()
    elapsed = time.perf_counter() - start
    await asyncio.gather(*tasks)
    await producer.delete(key)
    await producer.aclose()
    return {"rate": n / elapsed}


def _queue(prefix: str, concurrency: int) -> Any:
    from asyncjobs import JanitorConfig, JobContext, Queue
    from asyncjobs.stores.redis import RedisStore

    queue = Queue(
        RedisStore(REDIS_URL, prefix=prefix),
        concurrency=concurrency,
        janitor=JanitorConfig(enabled=False),
    )

    @queue.job_type("noop", max_attempts=1)
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    return queue


async def asyncjobs_drain(n: int, concurrency: int) -> dict[str, Any]:
    from asyncjobs.job import EventType

    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        async with _queue(prefix, 0) as submitter:
            for i in range(0, n, 100):
                await asyncio.gather(*(submitter.submit("noop") for _ in range(min(100, n - i))))
        worker = _queue(prefix, concurrency)
        done = asyncio.Event()
        seen = 0

        def on_event(event: Any) -> None:
            nonlocal seen
            if event.type is EventType.COMPLETED:
                seen += 1
                if seen == n:
                    done.set()

        worker.store.add_listener(on_event)
        start = time.perf_counter()
        async with worker:
            await done.wait()
            elapsed = time.perf_counter() - start
        return {"rate": n / elapsed}
    finally:
        await _destroy(REDIS_URL, "{" + prefix + "}:*")


async def asyncjobs_enqueue(n: int) -> dict[str, Any]:
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        async with _queue(prefix, 0) as queue:
            start = time.perf_counter()
            for _ in range(n):
                await queue.submit("noop")
            elapsed = time.perf_counter() - start
        return {"rate": n / elapsed}
    finally:
        await _destroy(REDIS_URL, "{" + prefix + "}:*")


async def asyncjobs_latency(n: int) -> dict[str, Any]:
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        async with _queue(prefix, 0) as submitter, _queue(prefix, 10):
            await asyncio.sleep(0.5)  # the worker reaches its idle wait

            async def one() -> float:
                t0 = time.perf_counter()
                job = await submitter.submit("noop")
                await submitter.wait(job.id, timeout=30)
                return time.perf_counter() - t0

            tasks = []
            for _ in range(20 + n):
                tasks.append(asyncio.create_task(one()))
                await asyncio.sleep(0.010)
            times = sorted((await asyncio.gather(*tasks))[20:])
        return {
            "p50_ms": times[len(times) // 2] * 1000,
            "p95_ms": times[int(len(times) * 0.95)] * 1000,
        }
    finally:
        await _destroy(REDIS_URL, "{" + prefix + "}:*")


async def child(case: str, system: str, n: int) -> dict[str, Any]:
    if case.startswith("drain_c"):
        c = int(case[len("drain_c") :])
        return await (raw_drain(n, c) if system == "raw" else asyncjobs_drain(n, c))
    if case == "enqueue":
        return await asyncjobs_enqueue(n)
    return await asyncjobs_latency(min(n, 300))


# -- the driver --------------------------------------------------------------------------

_PEERS = {
    "saq": "peer_saq.py",
    "arq": "peer_arq.py",
    "taskiq": "peer_taskiq.py",
    "streaq": "peer_streaq.py",
}


def _peer_argv(python: str, peer: str, case: str, n: int) -> list[str] | None:
    script = HERE / _PEERS[peer]
    if not script.exists():
        return None
    if case.startswith("drain_c"):
        mode, extra = "drain", ["--concurrency", case[len("drain_c") :]]
    elif case == "enqueue":
        mode, extra = "enqueue", []
    else:
        mode, extra = "latency", ["--concurrency", "10"]
    nn = min(n, 300) if mode == "latency" else n
    argv = [python, str(script), mode, "--n", str(nn), *extra]
    if peer == "saq":
        argv += ["--backend", "redis"]
    return argv


def _run(argv: list[str], timeout: float) -> dict[str, Any] | str:
    env = {**os.environ, "BENCH_REDIS_URL": REDIS_URL}
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE
        )
    except subprocess.TimeoutExpired:
        return "timed out"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return f"failed: {last[:80]}"
    line = done.stdout.strip().splitlines()[-1]
    data: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return data


def _figure(result: dict[str, Any], case: str) -> float | None:
    if case == "latency":
        for key in ("p50_ms", "done_p50_ms"):
            if key in result:
                return float(result[key])
        return None
    return float(result["rate"]) if "rate" in result else None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peer-python", default=None, help="a python that imports the peers")
    parser.add_argument("--peers", default="saq,arq,taskiq,streaq")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SYSTEM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child[0], args.child[1], args.n))))
        return
    cases = ["drain_c10", "drain_c50", "enqueue", "latency"]
    systems = ["asyncjobs", "raw"] + (
        [p for p in args.peers.split(",") if p] if args.peer_python else []
    )
    table: dict[tuple[str, str], str] = {}
    medians: dict[tuple[str, str], float] = {}
    for case in cases:
        for system in systems:
            if system == "raw" and not case.startswith("drain"):
                continue
            if system in ("asyncjobs", "raw"):
                argv: list[str] | None = [
                    sys.executable,
                    __file__,
                    "--n",
                    str(args.n),
                    "--child",
                    case,
                    system,
                ]
            else:
                argv = _peer_argv(args.peer_python, system, case, args.n)
            if argv is None:
                table[(case, system)] = "no script"
                continue
            figures: list[float] = []
            note = ""
            for _ in range(args.runs):
                result = _run(argv, timeout=300)
                if isinstance(result, str):
                    note = result
                    break
                figure = _figure(result, case)
                if figure is not None:
                    figures.append(figure)
            if figures:
                medians[(case, system)] = statistics.median(figures)
                table[(case, system)] = f"{medians[(case, system)]:,.1f}"
            else:
                table[(case, system)] = note or "n/a"
            print(f"{case:10} {system:10} {table[(case, system)]}", file=sys.stderr, flush=True)
    print(
        f"\nN={args.n}, medians of {args.runs}; drain/enqueue in jobs/s, latency p50 in ms;"
        f" load {os.getloadavg()[0]:.2f}\n"
    )
    print("| case | " + " | ".join(systems) + " |")
    print("| --- |" + " --- |" * len(systems))
    for case in cases:
        print(f"| {case} | " + " | ".join(table.get((case, s), "-") for s in systems) + " |")
    ours = {c: medians.get((c, "asyncjobs")) for c in cases}
    for case in ("drain_c10", "drain_c50"):
        raw = medians.get((case, "raw"))
        peers = [medians[(case, p)] for p in systems[2:] if (case, p) in medians]
        if ours[case] and raw:
            line = f"{case}: {ours[case] / raw:.2f}x raw"
            if peers:
                line += f", {ours[case] / max(peers):.2f}x the best peer"
            print(line)


if __name__ == "__main__":
    main()
