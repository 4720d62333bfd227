"""Sequential submits on the Redis store (or SAQ's enqueues), for instruction counts.

    valgrind --tool=callgrind python benchmarks/redis_submit_loop.py asyncjobs 200
    valgrind --tool=callgrind python benchmarks/redis_submit_loop.py asyncjobs 1200

The difference of the two runs' instruction totals divided by 1,000 is what one submit
costs the client process (start-up cancels out); ``saq`` runs SAQ's enqueue instead.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from typing import Any

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
DROP = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end"


async def main(system: str, n: int) -> None:
    if system == "asyncjobs":
        from asyncjobs import JanitorConfig, Queue

        prefix = f"loop_{uuid.uuid4().hex[:8]}"
        queue = Queue(f"{URL}?prefix={prefix}", concurrency=0, janitor=JanitorConfig(enabled=False))

        @queue.job_type("noop", max_attempts=1)
        async def noop(ctx: Any, params: dict[str, Any]) -> None:
            return None

        async with queue:
            for _ in range(n):
                await queue.submit("noop")
            await queue.store._redis().eval(DROP, 0, "{" + prefix + "}:*")  # type: ignore[attr-defined]
        return
    from saq import Queue as SaqQueue

    saq = SaqQueue.from_url(URL, name=f"loop{uuid.uuid4().hex[:6]}")
    await saq.connect()
    for _ in range(n):
        await saq.enqueue("noop")
    await saq.redis.eval(DROP, 0, f"saq:{saq.name}*")
    await saq.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
