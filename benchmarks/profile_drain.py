"""Profile the memory store's end-to-end drain (issue 6, item 4).

    python benchmarks/profile_drain.py --n 5000 --concurrency 50            # cProfile table
    python benchmarks/profile_drain.py --n 5000 --pyinstrument              # call tree
    python benchmarks/profile_drain.py --store postgres --n 600 --pyinstrument

Pre-enqueues N no-op jobs on a fresh store, then profiles only the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time

from bench_asyncjobs import CompletionCounter, fresh_store, make_queue

from asyncjobs.stores import MemoryStore, open_store


async def drain(n: int, concurrency: int, profiler: object, kind: str = "memory") -> float:
    async with fresh_store(kind) as url:
        return await _drain(url, n, concurrency, profiler)


async def _drain(url: str, n: int, concurrency: int, profiler: object) -> float:
    store = MemoryStore() if url == "memory://" else open_store(url)
    await store.open()
    async with make_queue(store, 0) as client:
        await asyncio.gather(*(client.submit("noop") for _ in range(n)))
    counter = CompletionCounter(n)
    store.add_listener(counter)
    profiler.enable()  # type: ignore[attr-defined]
    start = time.perf_counter()
    async with make_queue(store, concurrency):
        await counter.finished.wait()
        elapsed = time.perf_counter() - start
        profiler.disable()  # type: ignore[attr-defined]
    await store.close()
    return elapsed


class _Pyi:
    def __init__(self) -> None:
        from pyinstrument import Profiler

        self.p = Profiler(interval=0.0005, async_mode="disabled")

    def enable(self) -> None:
        self.p.start()

    def disable(self) -> None:
        self.p.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--pyinstrument", action="store_true")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--store", default="memory", choices=["memory", "sqlite", "postgres"])
    args = parser.parse_args()
    profiler: object = _Pyi() if args.pyinstrument else cProfile.Profile()
    elapsed = asyncio.run(drain(args.n, args.concurrency, profiler, args.store))
    print(f"drained {args.n} jobs in {elapsed:.2f} s under the profiler")
    if isinstance(profiler, _Pyi):
        print(profiler.p.output_text(unicode=False, color=False, show_all=False))
    else:
        assert isinstance(profiler, cProfile.Profile)
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
