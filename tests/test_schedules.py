"""Schedules: tick arithmetic, the missed-ticks policy on an injected clock, and exactly
one job per tick from two queues sharing one SQLite file or one PostgreSQL schema."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncjobs import JobContext, Queue
from asyncjobs.errors import ConfigurationError, InvalidParams, UnknownJobType
from asyncjobs.schedules import Schedule, tick_key

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def build(store: str = "memory://", clock: Any = None, concurrency: int = 0) -> Queue:
    options: dict[str, Any] = {"concurrency": concurrency}
    if clock is not None:
        options["clock"] = clock
    queue = Queue(store, **options)

    @queue.job_type("tick")
    async def tick(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        return params

    return queue


def test_every_ticks_are_aligned_to_the_epoch() -> None:
    s = Schedule(name="s", type="t", every=60)
    assert s.latest(at(0)) == at(0)
    assert s.latest(at(59.9)) == at(0)
    assert s.next_after(at(0)) == at(60)
    assert s.period(at(0)) == 60
    fast = Schedule(name="f", type="t", every=0.25)
    assert fast.latest(at(1.3)) == at(1.25)


def test_cron_ticks_with_and_without_seconds() -> None:
    weekly = Schedule(name="w", type="t", cron="0 9 * * 1")  # Mondays 09:00 UTC
    assert weekly.next_after(T0) == datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
    assert weekly.latest(T0) == datetime(2026, 11, 16, 9, 0, tzinfo=timezone.utc)
    five = Schedule(name="5s", type="t", cron="*/5 * * * * *")  # sixth field: seconds
    assert five.latest(at(7)) == at(5)
    assert five.latest(at(5)) == at(5)
    assert five.next_after(at(5)) == at(10)
    assert five.to_wire(at(7))["next_run"] == "2026-11-22T12:00:10+00:00"


def test_bad_schedules_fail_at_declaration() -> None:
    queue = build()
    with pytest.raises(ConfigurationError):
        queue.schedule("tick")
    with pytest.raises(ConfigurationError):
        queue.schedule("tick", cron="* * * * *", every=5)
    with pytest.raises(ConfigurationError):
        queue.schedule("tick", cron="not cron")
    with pytest.raises(ConfigurationError):
        queue.schedule("tick", every=0)
    with pytest.raises(UnknownJobType):
        queue.schedule("nope", every=5)
    queue.schedule("tick", every=5)
    with pytest.raises(ConfigurationError):
        queue.schedule("tick", every=10)  # same name
    typed = Queue()

    @typed.job_type("strict")
    async def strict(ctx: JobContext, params: Schedule) -> None: ...

    with pytest.raises(InvalidParams):
        typed.schedule("strict", every=5, params={"bogus": 1})


async def _ticks(queue: Queue) -> list[str]:
    jobs = (await queue.list(limit=1000)).jobs
    return sorted(j.idempotency_key or "" for j in jobs)


async def _until(predicate: Any, within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while not await predicate():
            await anyio.sleep(0.02)


@pytest.mark.parametrize("missed", ["skip", "catch_up"])
async def test_missed_ticks_policy_on_an_injected_clock(tmp_path: Path, missed: str) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    clock = Clock(at(190))  # ticks at 100 and 200; the one at 100 was missed
    queue = build(url, clock)
    queue.schedule("tick", every=100, missed=missed, name="hourly")  # type: ignore[arg-type]
    async with queue:
        await anyio.sleep(0.3)
        expected = [tick_key("hourly", at(100))] if missed == "catch_up" else []
        assert await _ticks(queue) == expected
        clock.now = at(200.5)

        async def fired() -> bool:
            return tick_key("hourly", at(200)) in await _ticks(queue)

        await _until(fired)
        assert await _ticks(queue) == sorted([*expected, tick_key("hourly", at(200))])
        jobs = (await queue.list(limit=10)).jobs
        assert all(j.tags == ("schedule:hourly",) for j in jobs)
    # A restart on the same file within the same tick runs nothing again.
    again = build(url, Clock(at(201)))
    again.schedule("tick", every=100, missed="catch_up", name="hourly")
    async with again:
        await anyio.sleep(0.3)
        assert await _ticks(again) == sorted([*expected, tick_key("hourly", at(200))])


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
)
async def test_two_queues_on_one_store_make_one_job_per_tick(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    elif kind == "redis":
        redis_url: str = request.getfixturevalue("redis_url")
        prefix = f"aj_sched_{uuid.uuid4().hex[:12]}"
        url = f"{redis_url}?prefix={prefix}"
    else:
        base: str = request.getfixturevalue("postgres_url")
        url = f"{base}{'&' if '?' in base else '?'}schema=aj_sched_{uuid.uuid4().hex[:12]}"
    queues = [build(url, concurrency=2) for _ in range(2)]
    for q in queues:
        q.schedule("tick", every=0.2, params={"from": "schedule"})
    try:
        async with queues[0], queues[1]:
            await anyio.sleep(2.5)
        async with build(url) as reader:
            jobs = (await reader.list(limit=1000)).jobs
    finally:
        if kind == "postgres":
            from tests_support_pg import drop_schema

            await drop_schema(url)
        elif kind == "redis":
            from stores.conftest import destroy_redis_prefix

            await destroy_redis_prefix(redis_url, prefix)  # SCAN + DEL of this prefix only
    per_tick = Counter(j.idempotency_key for j in jobs)
    assert len(per_tick) >= 5  # ticks were made (a loaded machine may skip a few)
    assert set(per_tick.values()) == {1}, per_tick
    ticks = sorted(datetime.fromisoformat(k.split(":", 2)[2]) for k in per_tick if k)
    assert all(t.timestamp() * 5 % 1 < 1e-6 or t.timestamp() * 5 % 1 > 1 - 1e-6 for t in ticks)
    assert {j.params["from"] for j in jobs} == {"schedule"}


async def test_a_full_queue_skips_a_tick_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(at(0.5))
    queue = Queue("memory://", concurrency=0, max_queued=2, clock=clock)

    @queue.job_type("tick")
    async def tick(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    queue.schedule("tick", every=10, name="often")
    async with queue:
        await _until(lambda: _count(queue, 1))  # the tick at 0 fits
        filler = await queue.submit("tick")
        clock.now = at(10.5)  # the queue holds 2 waiting jobs: the tick at 10 is refused

        async def warned() -> bool:
            return any("skipped its tick" in r.getMessage() for r in caplog.records)

        await _until(warned)
        assert await _ticks(queue) == sorted(["", tick_key("often", at(0))])
        assert queue.health().ok  # back-pressure, not an outage
        await queue.cancel(filler.id)  # room again: the next tick runs
        clock.now = at(20.5)
        await _until(lambda: _count(queue, 2, key=tick_key("often", at(20))))
        assert tick_key("often", at(10)) not in await _ticks(queue)


async def _count(queue: Queue, n: int, key: str | None = None) -> bool:
    keys = [k for k in await _ticks(queue) if k]
    return len(keys) == n and (key is None or key in keys)
