"""A PostgreSQL restart while a web process, worker processes and HTTP clients run.

A private server (``tests/servers.py``, never the shared one) backs ``asyncjobs serve``
(a Queue with concurrency 0) and two ``asyncjobs worker`` processes. Clients submit jobs
over HTTP, each with its own idempotency key, a short client timeout, and a retry with
the same key after any error. Mid-stream the server restarts (down for a second): every
connection is cut, requests hang or fail, leases run out while their holders wait.

Every submit that got a 202 must finish, exactly once and by its current lease holder
(the journal analysis of ``harness.py``); an attempt that failed during the outage does
not count as accepted, and its retries with the same key must not have created a second
job, whatever the failed attempt did before its reply was lost.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from functools import partial

import anyio
import attrs
import httpx
import pytest

from asyncjobs import Job, JobStatus
from asyncjobs.stores.postgres import PostgresStore
from cli_server import cli_server
from servers import own_postgres

from .harness import TESTS, Workers, analyse, chaos_seed, job_params, read_journal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEYS = 40  # HTTP submits, one idempotency key each
SUBMIT_DEADLINE = 60.0  # how long a client keeps retrying its key
DRAIN = 90.0
LEASE = 1.0


@attrs.define
class Submit:
    key: str
    tries: int = 0
    errors: list[str] = attrs.field(factory=list)
    job_id: str | None = None  # set once a try got 202: the job is accepted
    began: float = 0.0  # when the try that got 202 began


async def all_jobs(store: PostgresStore) -> list[Job]:
    jobs: list[Job] = []
    cursor = None
    while True:
        page = await store.list(cursor=cursor, limit=500)
        jobs += page.jobs
        if page.next_cursor is None:
            return jobs
        cursor = page.next_cursor


async def test_a_postgres_restart_under_web_workers_and_clients_loses_no_accepted_job(
    tmp_path: pytest.TempPathFactory,
) -> None:
    seed = chaos_seed()
    rng = random.Random(seed)
    print(f"\nchaos seed={seed} submits={KEYS}")
    journal, logs = tmp_path / "journal", tmp_path / "logs"
    journal.mkdir()
    logs.mkdir()
    submits = {f"chaos-{seed}-{i}": Submit(f"chaos-{seed}-{i}") for i in range(KEYS)}
    outage: list[float] = []

    with own_postgres() as server:
        env = {
            "ASYNCJOBS_CHAOS_URL": server.url,
            "ASYNCJOBS_CHAOS_LOG": str(journal),
            # Shorter than the outage: leases run out while their holders wait it out.
            "ASYNCJOBS_CHAOS_LEASE": str(LEASE),
        }
        observer = PostgresStore(server.url)
        web = cli_server(
            ["serve", "chaos.app:web", "--log-level", "warning"],
            cwd=TESTS, env=env, log=logs / "web.log",
        )  # fmt: skip
        with web as base, Workers(env, logs, 2) as workers:
            await observer.open()
            try:
                async with httpx.AsyncClient(base_url=base, timeout=1.0) as client:

                    async def submit(sub: Submit, params: dict[str, object]) -> None:
                        body = {"type": "chaos", "params": params, "idempotency_key": sub.key}
                        with anyio.move_on_after(SUBMIT_DEADLINE):
                            while True:
                                sub.tries += 1
                                sub.began = time.time()
                                try:
                                    reply = await client.post("jobs", json=body)
                                except httpx.TransportError as exc:
                                    sub.errors.append(type(exc).__name__)
                                else:
                                    if reply.status_code == 202:
                                        sub.job_id = reply.json()["id"]
                                        return
                                    sub.errors.append(str(reply.status_code))
                                await anyio.sleep(0.2)

                    async def restart() -> None:
                        # Shielded: a failing test must not leave the server half-restarted.
                        with anyio.CancelScope(shield=True):
                            outage.append(time.time())
                            await anyio.to_thread.run_sync(partial(server.restart, down_for=1.0))
                            outage.append(time.time())

                    async with anyio.create_task_group() as tg:
                        for i, sub in enumerate(submits.values()):
                            tg.start_soon(submit, sub, job_params(rng))
                            await anyio.sleep(rng.uniform(0.02, 0.12))
                            if i == KEYS // 3:
                                # Every worker is up (a process still starting when the
                                # server goes down may exit: that is not what this tests).
                                await workers.wait_ready(journal)
                                with anyio.fail_after(60):  # and they are busy
                                    while (await observer.stats()).counts[JobStatus.RUNNING] < 2:
                                        await anyio.sleep(0.05)
                                tg.start_soon(restart)

                accepted = [sub.job_id for sub in submits.values() if sub.job_id is not None]
                with anyio.move_on_after(DRAIN):
                    while True:
                        workers.replace_crashed()
                        done = {job.id for job in await all_jobs(observer) if job.is_terminal}
                        if done.issuperset(accepted):
                            break
                        await anyio.sleep(0.3)
                stored = await all_jobs(observer)
            finally:
                await observer.close()
        tail = workers.tail()

    per_key = Counter(job.idempotency_key for job in stored)
    duplicates = sum(n - 1 for n in per_key.values())
    by_key = {job.idempotency_key: job.id for job in stored}
    # A retry that got 202 names the job its key made, even if an earlier try made it.
    mismatched = [s.key for s in submits.values() if s.job_id and by_key.get(s.key) != s.job_id]
    figures = analyse(
        seed=seed,
        accepted=accepted,
        jobs={job.id: job for job in stored},
        records=read_journal(journal),
        died=workers.crashed,
        kills=0,
        crashed=len(workers.crashed),
    )
    errors = sum(len(s.errors) for s in submits.values())
    retried = sum(1 for s in submits.values() if s.errors and s.job_id)
    # Jobs made by a try whose reply was lost: the retry that got 202 found them by key.
    created = {job.id: job.created_at.timestamp() for job in stored}
    deduplicated = sum(
        1 for s in submits.values() if s.errors and s.job_id and created[s.job_id] < s.began
    )
    print(
        f"chaos postgres restart: outage={outage[1] - outage[0]:.1f}s submits={KEYS} "
        f"http_errors={errors} retried_keys={retried} made_by_a_failed_try={deduplicated} "
        f"duplicates={duplicates} "
        f"{figures.line()}"
    )
    assert len(outage) == 2
    assert len(accepted) == KEYS, [s for s in submits.values() if s.job_id is None]
    assert duplicates == 0, per_key.most_common(5)
    assert mismatched == []
    assert not figures.problems, "\n".join([figures.line(), *figures.problems[:20], tail])
    assert figures.crashed == 0, tail
    assert figures.finished == KEYS
