"""A Queue on PostgreSQL rides out a restart of the PostgreSQL server itself.

Mid-drain, the test restarts its own private server (``tests/servers.py``: every
connection is terminated, and the server refuses new ones until it is back). Every
accepted job must still complete exactly once, the LISTEN connection must come back
(another store instance hears events after the restart), and the store keeps working.

The server is a throwaway ``initdb`` cluster on a free port, never the machine's shared
one, so other tests running at the same moment are not disturbed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from asyncjobs import JanitorConfig, JobContext, JobEvent, Queue, WorkerConfig
from asyncjobs.job import EventType, JobStatus
from asyncjobs.stores.postgres import PostgresStore
from servers import OwnPostgres, own_postgres

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

E = EventType
FIRST, LATER = 60, 10  # jobs submitted before the restart, and after it
SLOTS = 6


@pytest.fixture
def server() -> Iterator[OwnPostgres]:
    with own_postgres() as pg:
        yield pg


async def _restart(server: OwnPostgres) -> None:
    """Restart the server and wait until it accepts connections again.

    Shielded: if the queue under test crashes meanwhile, cancelling this must not leave
    the server stopped between its stop and its start.
    """
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(lambda: server.restart(down_for=0.5))


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


async def test_a_queue_survives_a_server_restart_mid_drain(server: OwnPostgres) -> None:
    url = server.url
    store = PostgresStore(url, schema="aj_restart")
    observer = PostgresStore(url, schema="aj_restart")  # hears events only over LISTEN
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
    probes: list[str] = []
    try:
        local, remote = Log(store), Log(observer)
        async with queue:
            ids = [(await queue.submit("nap", params={"n": n})).id for n in range(FIRST)]
            await local.wait_until(E.COMPLETED, SLOTS * 2, within=30)
            assert local.count(E.COMPLETED) < FIRST  # the restart lands mid-drain
            heard_before = len(remote.events)
            await _restart(server)
            # The restart cut the observer's LISTEN connection with every other one.
            # The store keeps working: new jobs are accepted and run.
            ids += [
                (await queue.submit("nap", params={"n": n})).id for n in range(FIRST, FIRST + LATER)
            ]
            done = {}
            with anyio.fail_after(60):
                for job_id in ids:
                    done[job_id] = await queue.wait(job_id)
            # The other instance's LISTEN connection came back and hears new events. A
            # probe that ends before it is back is missed, so probe until one is heard.
            with anyio.fail_after(30):
                while not any(
                    e.type is E.COMPLETED and e.job.id in probes
                    for e in remote.events[heard_before:]
                ):
                    probe = await queue.submit("nap", params={"n": -1})
                    probes.append(probe.id)
                    await queue.wait(probe.id)
                    with anyio.move_on_after(1.0):
                        await remote.changed.wait()
            for probe_id in probes:
                await queue.delete(probe_id)
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
    assert set(completions) == {*ids, *probes}
    assert max(completions.values()) == 1
    for job_id, job in done.items():
        after = [e for e in local.events if e.job.id == job_id and e.job.version > job.version]
        assert after == [], f"job {job_id} changed after it completed"
        # Each attempt began with a claim; a claim whose reply was lost to the restart
        # still counts an attempt, so a job may have needed more than one.
        assert 1 <= job.attempts <= 5
