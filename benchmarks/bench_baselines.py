"""Baselines without a store: raw ``asyncio.Queue`` with consumer tasks, and aiojobs.

These bound what any in-process job runner can do on this machine's event loop: a
no-op job costs one queue put/get (asyncio.Queue) or one task spawn (aiojobs)::

    python benchmarks/bench_baselines.py enqueue --system asyncio --n 10000
    python benchmarks/bench_baselines.py drain --system aiojobs --n 5000 --concurrency 50
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import base_parser, emit


async def noop() -> None:
    return None


async def asyncio_queue(mode: str, n: int, concurrency: int) -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    if mode == "enqueue":
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            await queue.put(noop)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    else:
        for _ in range(n):
            queue.put_nowait(noop)
        done = 0
        finished = asyncio.Event()

        async def consumer() -> None:
            nonlocal done
            while True:
                job = await queue.get()
                await job()
                done += 1
                if done == n:
                    finished.set()

        start, cpu = time.perf_counter(), time.process_time()
        tasks = [asyncio.create_task(consumer()) for _ in range(concurrency)]
        await finished.wait()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    emit(
        system="asyncio.Queue",
        backend="memory",
        mode=mode if mode == "enqueue" else f"drain_c{concurrency}",
        n=n,
        seconds=elapsed,
        rate=n / elapsed,
        cpu_rate=n / cpu,
    )


async def aiojobs_run(mode: str, n: int, concurrency: int) -> None:
    import aiojobs

    # aiojobs has no separate enqueue: spawn() *is* the submit; pending jobs beyond the
    # limit wait inside the scheduler, which is the pre-enqueued state of a drain.
    scheduler = aiojobs.Scheduler(limit=concurrency, pending_limit=n + 1)
    done = 0
    finished = asyncio.Event()

    async def job() -> None:
        nonlocal done
        done += 1
        if done == n:
            finished.set()

    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await scheduler.spawn(job())
    spawned = time.perf_counter() - start
    await finished.wait()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    await scheduler.close()
    if mode == "enqueue":
        emit(
            system="aiojobs",
            backend="memory",
            mode="enqueue",
            n=n,
            seconds=spawned,
            rate=n / spawned,
        )
    else:
        emit(
            system="aiojobs",
            backend="memory",
            mode=f"drain_c{concurrency}",
            n=n,
            seconds=elapsed,
            rate=n / elapsed,
            cpu_rate=n / cpu,
        )


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--system", choices=["asyncio", "aiojobs"], default="asyncio")
    args = parser.parse_args()
    run = asyncio_queue if args.system == "asyncio" else aiojobs_run
    asyncio.run(run(args.mode, args.n, args.concurrency))


if __name__ == "__main__":
    main()
