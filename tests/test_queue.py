"""Queue API: submit validation, idempotency, limits, list/get/delete/purge, wait, lifespan."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from asyncjobs import (
    ConfigurationError,
    IllegalTransition,
    InvalidParams,
    InvalidSubmission,
    JanitorConfig,
    JobContext,
    JobNotFound,
    JobStatus,
    MemoryStore,
    Queue,
    QueueFull,
    UnknownJobType,
    WaitTimeout,
)

ROOT = Path(__file__).resolve().parents[1]


@attrs.frozen
class Greet:
    name: str = attrs.field(validator=attrs.validators.min_len(1))
    times: int = attrs.field(default=1, validator=attrs.validators.ge(1))


def make_queue(**kwargs: Any) -> Queue:
    kwargs.setdefault("janitor", JanitorConfig(interval=0.02))
    queue = Queue(**kwargs)

    @queue.job_type("greet", max_attempts=1)
    async def greet(ctx: JobContext, params: Greet) -> str:
        return " ".join([f"hello {params.name}"] * params.times)

    @queue.job_type("hold", max_attempts=1)
    async def hold(ctx: JobContext, params: dict[str, Any]) -> None:
        await anyio.sleep_forever()

    return queue


async def test_submit_normalises_params_and_runs_the_handler() -> None:
    queue = make_queue()
    async with queue:
        job = await queue.submit("greet", {"name": "ada"})
        assert job.params == {"name": "ada", "times": 1}
        assert job.status is JobStatus.QUEUED
        assert len(job.id) == 26
        done = await queue.wait(job.id, timeout=5)
    assert done.status is JobStatus.COMPLETED
    assert done.result == "hello ada"


async def test_submit_accepts_a_params_instance() -> None:
    queue = make_queue()
    async with queue:
        job = await queue.submit("greet", Greet("bo", times=2))
        assert job.params == {"name": "bo", "times": 2}
        assert (await queue.wait(job.id, timeout=5)).result == "hello bo hello bo"


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"name": ""}, ["name"]),
        ({"name": "x", "times": 0}, ["times"]),
        ({"name": 5}, ["name"]),
        ({}, ["name"]),
        ({"name": "x", "extra": 1}, ["extra"]),
    ],
)
async def test_invalid_params_store_nothing(params: dict[str, Any], loc: list[str]) -> None:
    queue = make_queue(concurrency=0)
    async with queue:
        with pytest.raises(InvalidParams) as info:
            await queue.submit("greet", params)
        assert [e["loc"] for e in info.value.errors] == [loc]
        assert (await queue.stats()).total == 0


async def test_unknown_type_stores_nothing() -> None:
    queue = make_queue(concurrency=0)
    async with queue:
        with pytest.raises(UnknownJobType, match="greet"):
            await queue.submit("nope", {})
        assert (await queue.stats()).total == 0


@pytest.mark.parametrize(
    ("options", "loc"),
    [
        ({"delay": -1}, ["delay"]),
        ({"delay": 1, "run_at": datetime.now(timezone.utc)}, ["delay"]),
        ({"run_at": datetime(2030, 1, 1)}, ["run_at"]),  # naive: ambiguous
        ({"timeout": 0}, ["timeout"]),
        ({"max_attempts": 0}, ["max_attempts"]),
        ({"tags": "oops"}, ["tags"]),
    ],
)
async def test_invalid_options_store_nothing(options: dict[str, Any], loc: list[str]) -> None:
    queue = make_queue(concurrency=0)
    async with queue:
        with pytest.raises(InvalidSubmission) as info:
            await queue.submit("greet", {"name": "x"}, **options)
        assert [e["loc"] for e in info.value.errors] == [loc]
        assert (await queue.stats()).total == 0


async def test_submit_before_open_says_how_to_open() -> None:
    queue = make_queue()
    with pytest.raises(ConfigurationError, match="async with queue"):
        await queue.submit("greet", {"name": "x"})


async def test_idempotency_key_returns_the_first_job() -> None:
    queue = make_queue(concurrency=0)
    async with queue:
        first = await queue.submit("greet", {"name": "a"}, idempotency_key="k1")
        second = await queue.submit("greet", {"name": "b"}, idempotency_key="k1")
        assert second.id == first.id
        assert second.params == {"name": "a", "times": 1}
        assert (await queue.stats()).total == 1


async def test_max_queued_raises_queue_full_and_stores_nothing_more() -> None:
    queue = make_queue(concurrency=0, max_queued=2)
    async with queue:
        await queue.submit("greet", {"name": "a"})
        await queue.submit("greet", {"name": "b"}, delay=60)
        with pytest.raises(QueueFull) as info:
            await queue.submit("greet", {"name": "c"})
        assert info.value.retry_after > 0
        assert (await queue.stats()).total == 2


async def test_concurrency_zero_only_submits_and_observes() -> None:
    queue = make_queue(concurrency=0)
    async with queue:
        job = await queue.submit("greet", {"name": "a"})
        await anyio.sleep(0.1)
        assert (await queue.get(job.id)).status is JobStatus.QUEUED
        assert queue.worker is None and queue.running_count() == 0


async def test_scheduled_run_at_and_options_are_kept() -> None:
    queue = make_queue(concurrency=0)
    when = datetime.now(timezone.utc) + timedelta(hours=1)
    async with queue:
        job = await queue.submit(
            "greet", {"name": "a"}, run_at=when, priority=7, tags=["x", "y"], max_attempts=4
        )
    assert job.status is JobStatus.SCHEDULED
    assert job.run_at == when
    assert (job.priority, job.tags, job.max_attempts) == (7, ("x", "y"), 4)


async def test_list_filters_and_paginates_newest_first() -> None:
    queue = make_queue(concurrency=0)
    async with queue:
        greets = [await queue.submit("greet", {"name": str(i)}) for i in range(7)]
        holds = [await queue.submit("hold") for _ in range(3)]
        seen: list[str] = []
        cursor = None
        while True:
            page = await queue.list(type="greet", limit=3, cursor=cursor)
            seen += [j.id for j in page.jobs]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [j.id for j in reversed(greets)]
        await queue.cancel(holds[0].id)
        cancelled = await queue.list(status="cancelled")
        assert [j.id for j in cancelled.jobs] == [holds[0].id]
        live = await queue.list(status=["queued"], type=["hold"])
        assert [j.id for j in live.jobs] == [holds[2].id, holds[1].id]


async def test_cancel_a_finished_job_is_illegal_and_changes_nothing() -> None:
    queue = make_queue()
    async with queue:
        done = await queue.wait((await queue.submit("greet", {"name": "a"})).id, timeout=5)
        with pytest.raises(IllegalTransition):
            await queue.cancel(done.id)
        assert await queue.get(done.id) == done


async def test_delete_cancels_a_live_job_then_removes_it() -> None:
    queue = make_queue()
    async with queue:
        job = await queue.submit("hold")
        while (await queue.get(job.id)).status is not JobStatus.RUNNING:
            await anyio.sleep(0.01)
        last = await queue.delete(job.id)
        assert last.status is JobStatus.CANCELLED
        with pytest.raises(JobNotFound):
            await queue.get(job.id)


async def test_wait_times_out_on_a_live_job() -> None:
    queue = make_queue(concurrency=0)
    async with queue:
        job = await queue.submit("greet", {"name": "a"})
        with pytest.raises(WaitTimeout):
            await queue.wait(job.id, timeout=0.1)
        assert queue.bus.subscriber_count == 0
        with pytest.raises(JobNotFound):
            await queue.wait("01NOSUCHJOB0000000000000000", timeout=1)


async def test_purge_deletes_finished_jobs_only() -> None:
    queue = make_queue()
    async with queue:
        done = [await queue.submit("greet", {"name": str(i)}) for i in range(3)]
        for job in done:
            await queue.wait(job.id, timeout=5)
        live = await queue.submit("greet", {"name": "later"}, delay=60)
        with pytest.raises(ValueError, match="finished"):
            await queue.purge(status="scheduled")
        assert await queue.purge(older_than=3600) == 0  # all finished just now
        assert await queue.purge() == 3
        assert [j.id for j in (await queue.list()).jobs] == [live.id]


async def test_stats_count_per_status_and_type() -> None:
    queue = make_queue(concurrency=0)
    async with queue:
        await queue.submit("greet", {"name": "a"})
        await queue.submit("greet", {"name": "b"}, delay=30)
        held = await queue.submit("hold")
        await queue.cancel(held.id)
        stats = await queue.stats()
    assert stats.counts[JobStatus.QUEUED] == 1
    assert stats.counts[JobStatus.SCHEDULED] == 1
    assert stats.counts[JobStatus.CANCELLED] == 1
    assert stats.by_type["hold"][JobStatus.CANCELLED] == 1
    assert stats.total == 3


async def test_lifespan_opens_and_closes_the_queue() -> None:
    queue = make_queue()
    async with queue.lifespan(object()):
        assert queue.is_open
        done = await queue.wait((await queue.submit("greet", {"name": "l"})).id, timeout=5)
        assert done.status is JobStatus.COMPLETED
    assert not queue.is_open


async def test_a_shared_store_instance_is_not_closed_by_the_queue() -> None:
    store = MemoryStore()
    async with make_queue(store=store) as queue:
        job = await queue.submit("greet", {"name": "s"})
        await queue.wait(job.id, timeout=5)
    async with make_queue(store=store) as again:
        assert (await again.get(job.id)).status is JobStatus.COMPLETED


def test_the_design_one_screen_example_runs_as_written() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "one_screen.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "job_snapshot 0.0"
    assert "job_completed 1.0" in out
    assert out[-2:] == ["completed {'counted': 3}", "cancelled"]
