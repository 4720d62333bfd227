"""A Queue on PostgreSQL rides out a restart of the PostgreSQL server itself.

Mid-drain, the test restarts the cluster (``pg_ctlcluster ... restart``: every
connection is terminated, and the server refuses new ones until it is back). Every
accepted job must still complete exactly once, the LISTEN connection must come back
(another store instance hears events after the restart), and the store keeps working.

Needs root on the machine that runs the server (CI runs it so); otherwise it skips
locally and fails under ASYNCJOBS_REQUIRE_SERVICES=1. The server is up again when the
test ends, pass or fail, because other tests follow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest

from asyncjobs import JanitorConfig, JobContext, JobEvent, Queue, WorkerConfig
from asyncjobs.job import EventType, JobStatus
from asyncjobs.stores.postgres import PostgresStore

REQUIRE_SERVICES = os.environ.get("ASYNCJOBS_REQUIRE_SERVICES") == "1"
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(120)]

E = EventType
FIRST, LATER = 60, 10  # jobs submitted before the restart, and after it
SLOTS = 6


def _cluster_version() -> str:
    """The local cluster's version, if this process may restart it; else skip/fail."""
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*") if p.is_dir())
    reason = None
    if shutil.which("pg_ctlcluster") is None or not versions:
        reason = "pg_ctlcluster and /etc/postgresql/<version> are needed to restart the server"
    elif os.geteuid() != 0:
        reason = "restarting the PostgreSQL server needs root"
    if reason is not None:
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason}; ASYNCJOBS_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(reason)
    return versions[-1]


def _ready(url: str) -> bool:
    """Whether the server accepts connections (pg_isready; blocking, short)."""
    parts = urlsplit(url)
    args = ["pg_isready", "-q", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)]
    return subprocess.run(args, timeout=10, check=False).returncode == 0


def _ensure_up(version: str, url: str) -> None:
    """Start the cluster if it is down, and wait until it accepts connections."""
    deadline = time.monotonic() + 60
    if not _ready(url):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            timeout=60,
            check=False,
        )
    while not _ready(url):
        if time.monotonic() > deadline:
            raise RuntimeError("the PostgreSQL server did not come back within 60 s")
        time.sleep(0.2)


@pytest.fixture
async def schema(postgres_url: str) -> AsyncIterator[str]:
    name = f"aj_restart_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture
def cluster(postgres_url: str) -> Iterator[str]:
    """The cluster version; after the test, the server is up whatever happened."""
    version = _cluster_version()
    try:
        yield version
    finally:
        _ensure_up(version, postgres_url)


async def _restart(version: str, url: str) -> None:
    """Restart the server and wait until it accepts connections again.

    Shielded: if the queue under test crashes meanwhile, cancelling this must not kill
    pg_ctlcluster between its stop and its start.
    """
    with anyio.CancelScope(shield=True):
        try:
            result = await anyio.run_process(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                check=False,
            )
        finally:
            await anyio.to_thread.run_sync(_ensure_up, version, url)
    assert result.returncode == 0, result.stderr.decode()


class Log:
    """Every event a store hands to its listeners, and a wake-up on each."""

    def __init__(self, store: PostgresStore) -> None:
        self.events: list[JobEvent] = []
        self.changed = anyio.Event()
        self.remove = store.add_listener(self._on_event)

    def _on_event(self, event: JobEvent) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = anyio.Event()

    def count(self, type_: EventType) -> int:
        return sum(1 for e in self.events if e.type is type_)

    async def wait_until(self, type_: EventType, n: int, within: float) -> None:
        with anyio.fail_after(within):
            while self.count(type_) < n:
                await self.changed.wait()


async def test_a_queue_survives_a_server_restart_mid_drain(
    postgres_url: str, schema: str, cluster: str
) -> None:
    store = PostgresStore(postgres_url, schema=schema)
    observer = PostgresStore(postgres_url, schema=schema)  # hears events only over LISTEN
    # A short lease: a claim whose reply the restart swallowed is recovered quickly.
    queue = Queue(
        store,
        concurrency=SLOTS,
        worker=WorkerConfig(lease=5.0, heartbeat=1.0, idle_wait=1.0),
        janitor=JanitorConfig(interval=0.5),
    )

    @queue.job_type("nap", max_attempts=5)
    async def nap(ctx: JobContext, params: dict[str, Any]) -> int:
        for step in range(1, 5):
            await anyio.sleep(0.05)
            await ctx.progress(step / 4, f"step {step}")
        return int(params["n"])

    await observer.open()
    try:
        local, remote = Log(store), Log(observer)
        async with queue:
            ids = [(await queue.submit("nap", params={"n": n})).id for n in range(FIRST)]
            await local.wait_until(E.COMPLETED, SLOTS * 2, within=30)
            assert local.count(E.COMPLETED) < FIRST  # the restart lands mid-drain
            listener = observer.listener
            assert listener is not None
            before = listener.reconnects
            await _restart(cluster, postgres_url)
            # The store keeps working: new jobs are accepted and run.
            ids += [
                (await queue.submit("nap", params={"n": n})).id for n in range(FIRST, FIRST + LATER)
            ]
            done = {}
            with anyio.fail_after(60):
                for job_id in ids:
                    done[job_id] = await queue.wait(job_id)
            # The other instance's LISTEN connection came back and hears new events.
            with anyio.fail_after(20):
                while listener.reconnects == before:
                    await anyio.sleep(0.1)
            probe = await queue.submit("nap", params={"n": -1})
            with anyio.fail_after(20):
                while not any(
                    e.type is E.COMPLETED and e.job.id == probe.id for e in remote.events
                ):
                    await remote.changed.wait()
            await queue.delete(probe.id)
            stats = await queue.stats()
    finally:
        await observer.close()
        await store.close()  # the queue opened it, but does not own a store it was given

    # Every accepted job completed, with its own result.
    assert {job_id: job.status for job_id, job in done.items()} == dict.fromkeys(
        ids, JobStatus.COMPLETED
    )
    assert sorted(job.result for job in done.values()) == list(range(FIRST + LATER))
    assert stats.counts[JobStatus.COMPLETED] == FIRST + LATER
    # None finished twice: one completion each, and never another attempt afterwards.
    completions = Counter(e.job.id for e in local.events if e.type is E.COMPLETED)
    assert set(completions) == {*ids, probe.id}
    assert max(completions.values()) == 1
    for job_id, job in done.items():
        after = [e for e in local.events if e.job.id == job_id and e.job.version > job.version]
        assert after == [], f"job {job_id} changed after it completed"
        # Each attempt began with a claim; a claim whose reply was lost to the restart
        # still counts an attempt, so a job may have needed more than one.
        assert 1 <= job.attempts <= 5
