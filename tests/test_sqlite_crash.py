"""``kill -9`` of the only process on a SQLite queue, then a restart: every job finishes.

Two real processes run a real Queue on one file. The first submits jobs and is killed
while some run; the second starts on the same file, its janitor recovers the expired
leases, and its workers finish everything. The test reads the file through its own
SqliteStore, as a third process would.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from asyncjobs.job import JobStatus
from asyncjobs.stores.sqlite import SqliteStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

JOBS = 8

# argv: database path, "submit" (submit JOBS, then run until killed) or "resume" (run
# until every job has finished, then print them as JSON and exit).
APP = """
import json, sys
import anyio
from asyncjobs import JanitorConfig, JobContext, Queue, WorkerConfig

path, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
queue = Queue(
    f"sqlite:///{path}",
    concurrency=3,
    # The lease is written into each claim, so the killed process's claims expire one
    # second after its last heartbeat, whatever the restarted process uses.
    worker=WorkerConfig(lease=1.0, idle_wait=0.2),
    janitor=JanitorConfig(interval=0.2),
)

@queue.job_type("nap", max_attempts=3)
async def nap(ctx: JobContext, params: dict) -> dict:
    await anyio.sleep(params["seconds"])
    return {"attempt": ctx.attempt}

async def main() -> None:
    async with queue:
        if mode == "submit":
            for _ in range(count):
                await queue.submit("nap", {"seconds": 1.0})
            print("submitted", flush=True)
            await anyio.sleep_forever()
        while True:
            jobs = (await queue.list(limit=1000)).jobs
            if len(jobs) == count and all(job.is_terminal for job in jobs):
                break
            await anyio.sleep(0.1)
        print(json.dumps([[j.id, j.status.value, j.attempts] for j in jobs]), flush=True)

anyio.run(main)
"""


async def start(path: Path, mode: str) -> Process:
    return await anyio.open_process(
        [sys.executable, "-c", APP, str(path), mode, str(JOBS)], cwd=path.parent
    )


async def read_line(process: Process) -> str:
    assert process.stdout is not None
    data = b""
    while not data.endswith(b"\n"):
        data += await process.stdout.receive()
    return data.decode()


async def test_kill_9_then_restart_finishes_every_job(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    observer = SqliteStore(path)
    first = await start(path, "submit")
    try:
        with anyio.fail_after(30):
            assert (await read_line(first)).strip() == "submitted"
        await observer.open()
        with anyio.fail_after(30):
            # another process's state: nothing to wait on but the file itself
            while (await observer.stats()).counts[JobStatus.RUNNING] < 2:
                await anyio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
        await first.aclose()

    # The file is frozen now: what it says is running was interrupted mid-attempt.
    interrupted = {
        job.id: job.attempts
        for job in (await observer.list(statuses=[JobStatus.RUNNING], limit=100)).jobs
    }
    assert len(interrupted) >= 2
    assert (await observer.stats()).total == JOBS

    second = await start(path, "resume")
    try:
        with anyio.fail_after(60):
            summary = json.loads(await read_line(second))
        with anyio.fail_after(30):
            assert await second.wait() == 0
    finally:
        if second.returncode is None:
            second.kill()
            await second.wait()
        await second.aclose()

    assert len(summary) == JOBS
    assert {status for _, status, _ in summary} == {"completed"}
    jobs = {job.id: job for job in (await observer.list(limit=100)).jobs}
    await observer.close()
    assert {job.status for job in jobs.values()} == {JobStatus.COMPLETED}
    for job_id, attempts in interrupted.items():
        # the killed attempt counts: the job ran again as its next attempt
        assert jobs[job_id].attempts == attempts + 1
        assert jobs[job_id].result == {"attempt": attempts + 1}
    for job_id, job in jobs.items():
        if job_id not in interrupted:
            assert job.attempts == 1
