"""The one-screen example of DESIGN.md, runnable: ``python examples/one_screen.py``."""

import anyio
import attrs

from asyncjobs import JobContext, Queue


@attrs.frozen
class Countdown:
    seconds: int = attrs.field(validator=attrs.validators.ge(1))


queue = Queue()  # memory store, 3 jobs at a time


@queue.job_type("countdown", timeout=600, max_attempts=1)
async def countdown(ctx: JobContext, params: Countdown) -> dict[str, int]:
    for i in range(params.seconds):
        await ctx.progress(i / params.seconds, f"{params.seconds - i}s left")
        await anyio.sleep(1)
    return {"counted": params.seconds}


async def main() -> None:
    async with queue:  # workers + janitor run inside
        job = await queue.submit("countdown", {"seconds": 3})
        other = await queue.submit("countdown", {"seconds": 60})
        async for event in queue.subscribe(job_id=job.id):  # snapshot first, then live
            print(event.type, event.job.progress)
        done = await queue.wait(job.id, timeout=30)
        print(done.status, done.result)
        await queue.cancel(other.id)
        print((await queue.wait(other.id, timeout=5)).status)


if __name__ == "__main__":
    anyio.run(main)
