"""The queue's own scope: its tasks run apart from the host's, so a failure there never
cancels the host, and the queue may be opened and closed from different tasks."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from asyncjobs import JanitorConfig, JobContext, JobStatus, MemoryStore, Queue
from asyncjobs.supervision import Background, Supervisor
from asyncjobs.testing import FaultyStore


async def test_aclose_from_another_task_works() -> None:
    queue = Queue(janitor=JanitorConfig(interval=0.05))

    @queue.job_type("echo")
    async def echo(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        return params

    opened = anyio.Event()

    async def opener() -> None:
        await queue.__aenter__()
        opened.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(opener)
    await opened.wait()  # the opening task has ended; the queue runs on
    job = await queue.submit("echo", {"a": 1})
    assert (await queue.wait(job.id, timeout=10)).status is JobStatus.COMPLETED
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue.aclose)
    assert not queue.is_open


async def test_a_crash_in_the_queue_s_tasks_never_reaches_the_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor()
    background = Background(supervisor)

    async def buggy(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await anyio.sleep(0.05)
        raise AssertionError("a bug in a background loop")

    host_steps = 0
    with caplog.at_level(logging.ERROR):
        await background.start(buggy)
        with anyio.fail_after(10):
            while not background.done:
                await anyio.sleep(0.01)  # the host's own work, never cancelled
                host_steps += 1
    assert host_steps > 0
    [problem] = supervisor.health().problems
    assert problem.loop == "background"
    assert "a bug in a background loop" in problem.reason
    assert any("background tasks of the queue ended" in r.getMessage() for r in caplog.records)


async def test_a_starter_that_fails_to_start_raises_from_open() -> None:
    background = Background(Supervisor())

    async def refuses(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        raise ConnectionError("no store")

    with pytest.raises(ConnectionError, match="no store"):
        await background.start(refuses)
    assert background.done


async def test_the_first_janitor_tick_failing_does_not_stop_the_queue_opening() -> None:
    store = FaultyStore(MemoryStore())
    store.fail("requeue_expired")
    queue = Queue(store, janitor=JanitorConfig(interval=0.05))  # type: ignore[arg-type]
    async with queue:
        assert {p.loop for p in queue.health().problems} == {"janitor.requeue_expired"}
        store.heal()
        with anyio.fail_after(10):
            while not queue.health().ok:
                await anyio.sleep(0.02)
