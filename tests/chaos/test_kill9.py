"""``kill -9`` of worker processes at random moments, round after round, loses no job.

Three ``asyncjobs worker`` processes share one store (a SQLite file, or a PostgreSQL
schema) with this process, which submits jobs. A chaos loop kills a random worker with
SIGKILL at a random moment (mid-job, mid-claim, mid-finish, while starting up) and starts
a replacement, while more jobs arrive; then everything drains. Leases are short
(1.5 s, renewed every 0.5 s) so a killed worker's jobs come back quickly.

From the journals (see ``app.py``) the test computes and prints: accepted, finished,
lost (accepted and never finished), run twice (two executions of one job overlapping
while the first holder was alive; an execution ended by kill -9 ends at the kill) and
stale finishes (a completion the store accepted from a token that was not the current
lease). It fails on any loss, stale finish, failed job, double run within a valid lease,
or worker that died on its own.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from asyncjobs import Job, JobStatus, Queue

from .app import build
from .harness import JOBS, ROUNDS, Workers, analyse, chaos_seed, job_params, read_journal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKERS = 3
LEASE = 1.5  # app.py's default
DRAIN = 90.0  # seconds the jobs get to drain after the last kill (a generous deadline)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    postgres_url: str = request.getfixturevalue("postgres_url")
    schema = f"aj_chaos_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_url}?schema={schema}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def all_jobs(queue: Queue) -> dict[str, Job]:
    jobs: dict[str, Job] = {}
    cursor = None
    while True:
        page = await queue.store.list(cursor=cursor, limit=500)
        jobs.update((job.id, job) for job in page.jobs)
        if page.next_cursor is None:
            return jobs
        cursor = page.next_cursor


async def test_kill_9_rounds_lose_no_job_and_finish_none_stale(
    store_url: str, tmp_path: Path
) -> None:
    seed = chaos_seed()
    rng = random.Random(seed)
    print(f"\nchaos seed={seed} rounds={ROUNDS} jobs={JOBS} store={store_url.split(':')[0]}")
    journal, logs = tmp_path / "journal", tmp_path / "logs"
    journal.mkdir()
    logs.mkdir()
    env = {"ASYNCJOBS_CHAOS_URL": store_url, "ASYNCJOBS_CHAOS_LOG": str(journal)}
    # This process only submits: no worker, and no janitor (recovery is the workers' job).
    submitter = build(store_url, str(journal), concurrency=0, janitor=False)
    accepted: list[str] = []

    async def submit(n: int) -> None:
        for _ in range(n):
            accepted.append((await submitter.submit("chaos", job_params(rng))).id)

    async with submitter:
        with Workers(env, logs, WORKERS) as workers:
            await submit(JOBS // 2)
            with anyio.fail_after(60):  # the workers are up and running jobs
                while (await submitter.stats()).counts[JobStatus.RUNNING] < 2:
                    await anyio.sleep(0.05)
            later = JOBS - JOBS // 2
            for r in range(ROUNDS):
                await anyio.sleep(rng.uniform(0.1, 0.7))
                workers.replace_crashed()
                workers.kill_random(rng)
                if r % 5 == 2:  # now and then a stale holder: frozen past its lease
                    await workers.freeze(submitter, rng, lease=LEASE)
                # The rest arrive during the rounds, so the kills keep hitting work.
                await submit(later * (r + 1) // ROUNDS - later * r // ROUNDS)
            with anyio.move_on_after(DRAIN):
                while True:
                    workers.replace_crashed()
                    jobs = await all_jobs(submitter)
                    if all(jobs[job_id].is_terminal for job_id in accepted):
                        break
                    await anyio.sleep(0.2)
            jobs = await all_jobs(submitter)
        tail = workers.tail()

    figures = analyse(
        seed=seed,
        accepted=accepted,
        jobs=jobs,
        records=read_journal(journal),
        died={**workers.killed, **workers.crashed},
        kills=len(workers.killed),
        frozen=workers.frozen,
        crashed=len(workers.crashed),
    )
    print(f"chaos kill -9 ({store_url.split(':')[0]}): {figures.line()}")
    assert figures.kills >= ROUNDS
    assert figures.interrupted > 0, "no kill landed mid-job: the test tested nothing"
    assert not figures.problems, "\n".join([figures.line(), *figures.problems[:20], tail])
    assert figures.crashed == 0, tail
    assert figures.finished == figures.accepted == JOBS
