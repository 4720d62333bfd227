"""EventBus and Subscriber (bounded, coalescing buffers) and Subscription via a Queue."""

from __future__ import annotations

import inspect
import itertools
from datetime import datetime, timezone
from typing import Any

import anyio
import attrs
import pytest

from asyncjobs import (
    EventBus,
    EventType,
    Job,
    JobContext,
    JobEvent,
    JobNotFound,
    JobStatus,
    Outcome,
    Queue,
    SubscriberOverflow,
)
from asyncjobs.events import Subscriber
from asyncjobs.testing import FakeClock

NOW = datetime(2026, 11, 22, tzinfo=timezone.utc)


class Events:
    """Makes events with growing seq and per-job growing versions."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self._versions: dict[str, int] = {}

    def __call__(self, type: EventType, job_id: str = "j1", job_type: str = "work") -> JobEvent:
        version = self._versions.get(job_id, 0) + 1
        self._versions[job_id] = version
        status = {
            EventType.COMPLETED: JobStatus.COMPLETED,
            EventType.FAILED: JobStatus.FAILED,
            EventType.CANCELLED: JobStatus.CANCELLED,
            EventType.DELETED: JobStatus.COMPLETED,
            EventType.CREATED: JobStatus.QUEUED,
        }.get(type, JobStatus.RUNNING)
        job = Job(
            id=job_id,
            type=job_type,
            params={},
            status=status,
            created_at=NOW,
            run_at=NOW,
            version=version,
            progress=version / 1_000_000,
        )
        return JobEvent(type=type, seq=next(self._seq), at=NOW, job=job)


@pytest.fixture
def make() -> Events:
    return Events()


async def take(sub: Subscriber, n: int) -> list[JobEvent]:
    with anyio.fail_after(5):
        return [await sub.get() for _ in range(n)]


# -- filters ----------------------------------------------------------------------------


async def test_filters_by_job_by_type_and_all(make: Events) -> None:
    bus = EventBus()
    everything = bus.subscribe()
    one_job = bus.subscribe(job_id="a")
    one_type = bus.subscribe(type="mail")
    one_job_of_type = bus.subscribe(job_id="a", type="other")
    events = [
        make(EventType.CREATED, "a", "work"),
        make(EventType.CREATED, "b", "mail"),
        make(EventType.STARTED, "a", "work"),
        make(EventType.COMPLETED, "b", "mail"),
    ]
    for event in events:
        bus.publish(event)
    assert await take(everything, 4) == events
    assert await take(one_job, 2) == [events[0], events[2]]
    assert await take(one_type, 2) == [events[1], events[3]]
    assert one_job_of_type.pending == 0  # job "a" is not of type "other"
    assert bus.subscriber_count == 4


def test_publish_is_synchronous() -> None:
    assert not inspect.iscoroutinefunction(EventBus.publish)
    assert not inspect.iscoroutinefunction(Subscriber.offer)


def test_max_pending_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        EventBus(max_pending=0)


# -- coalescing -----------------------------------------------------------------------


async def test_progress_coalesces_to_the_newest_per_job(make: Events) -> None:
    bus = EventBus(max_pending=100)
    sub = bus.subscribe()
    created = make(EventType.CREATED, "a")
    bus.publish(created)
    progress = [make(EventType.PROGRESS, "a") for _ in range(50)]
    other = [make(EventType.PROGRESS, "b") for _ in range(50)]
    for a, b in zip(progress, other, strict=True):
        bus.publish(a)
        bus.publish(b)
    assert sub.pending == 3
    assert await take(sub, 3) == [created, progress[-1], other[-1]]


async def test_versions_stay_in_order_after_coalescing(make: Events) -> None:
    bus = EventBus(max_pending=100)
    sub = bus.subscribe()
    first = make(EventType.PROGRESS, "a")
    retry = make(EventType.RETRYING, "a")
    last = make(EventType.PROGRESS, "a")
    for event in (first, retry, last):
        bus.publish(event)
    # The coalesced progress moves behind the retry: versions never go backwards.
    got = await take(sub, 2)
    assert got == [retry, last]
    assert [e.job.version for e in got] == sorted(e.job.version for e in got)


async def test_non_final_events_coalesce_per_job_once_max_pending_is_reached(
    make: Events,
) -> None:
    bus = EventBus(max_pending=4)
    sub = bus.subscribe()
    early = [make(EventType.CREATED, job) for job in ("a", "b", "c", "d")]
    for event in early:
        bus.publish(event)
    assert sub.pending == 4  # below the limit nothing coalesces
    later = [make(EventType.STARTED, "a"), make(EventType.RETRYING, "a")]
    for event in later:
        bus.publish(event)
    assert sub.pending == 5  # the two later events of "a" share one slot
    assert await take(sub, 5) == [*early, later[-1]]


async def test_final_events_are_never_dropped(make: Events) -> None:
    bus = EventBus(max_pending=2)
    sub = bus.subscribe()
    finals = [
        make(EventType.COMPLETED, "a"),
        make(EventType.FAILED, "b"),
        make(EventType.CANCELLED, "c"),
        make(EventType.DELETED, "a"),
    ]
    noise = [make(EventType.PROGRESS, "d") for _ in range(10)]
    for final, progress in zip(finals, noise[: len(finals)], strict=True):
        bus.publish(final)
        bus.publish(progress)
    for progress in noise[len(finals) :]:
        bus.publish(progress)
    got = await take(sub, sub.pending)
    assert [e for e in got if e.type.is_final] == finals
    assert [e for e in got if not e.type.is_final] == [noise[-1]]


async def test_overflow_at_four_times_max_pending(make: Events) -> None:
    bus = EventBus(max_pending=2)
    sub = bus.subscribe()
    for job in "abcdefg":  # 7 final events: one short of 4 * 2
        bus.publish(make(EventType.COMPLETED, job))
    assert sub.pending == 7
    bus.publish(make(EventType.COMPLETED, "h"))
    assert sub.pending == 0  # cut off: memory is released at once
    with pytest.raises(SubscriberOverflow):
        await take(sub, 1)
    bus.publish(make(EventType.COMPLETED, "i"))
    assert sub.pending == 0  # a cut-off subscriber takes nothing more
    sub.close()
    assert bus.subscriber_count == 0


@pytest.mark.timeout(30)
def test_memory_stays_bounded_under_a_subscriber_that_never_reads(make: Events) -> None:
    bus = EventBus(max_pending=1000)
    sub = bus.subscribe()
    peak = 0
    for i in range(100_000):
        bus.publish(make(EventType.PROGRESS, f"job{i % 10}"))
        peak = max(peak, sub.pending)
    assert peak <= 10
    assert sub.pending == 10


async def test_a_blocked_reader_is_woken_by_publish(make: Events) -> None:
    bus = EventBus()
    sub = bus.subscribe(job_id="a")
    got: list[JobEvent] = []
    event = make(EventType.STARTED, "a")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                got.append(await sub.get())

            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            bus.publish(event)  # the task group waits for the woken reader
    assert got == [event]


# -- close ----------------------------------------------------------------------------


async def test_close_unregisters_and_ends_a_waiting_get(make: Events) -> None:
    bus = EventBus()
    subs = [bus.subscribe(), bus.subscribe(job_id="a"), bus.subscribe(type="work")]
    assert bus.subscriber_count == 3
    ended = []
    async with anyio.create_task_group() as tg:

        async def reader() -> None:
            with pytest.raises(anyio.EndOfStream):
                await subs[0].get()
            ended.append(True)

        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        for sub in subs:
            sub.close()
            sub.close()  # idempotent
    assert ended == [True]
    assert bus.subscriber_count == 0
    bus.publish(make(EventType.CREATED, "a"))
    assert all(sub.pending == 0 for sub in subs)


def test_overflowed_subscriber_unregisters_on_close(make: Events) -> None:
    bus = EventBus(max_pending=1)
    sub = bus.subscribe(job_id="a")
    for _ in range(4):
        bus.publish(make(EventType.DELETED, "a"))
    assert sub.pending == 0
    sub.close()
    assert bus.subscriber_count == 0


# -- Subscription through a real Queue --------------------------------------------------


@attrs.frozen
class Steps:
    n: int = 3


def make_queue(clock: FakeClock | None = None, **options: Any) -> Queue:
    queue = Queue(concurrency=0, clock=clock or FakeClock(), **options)

    @queue.job_type("steps")
    async def steps(ctx: JobContext, params: Steps) -> int:
        return params.n

    return queue


def lease_token(job: Job) -> str:
    assert job.lease is not None
    return job.lease.token


async def test_job_subscription_snapshot_first_then_live_then_ends() -> None:
    clock = FakeClock()
    queue = make_queue(clock)
    async with queue:
        job = await queue.submit("steps", {"n": 2})
        got: list[JobEvent] = []
        with anyio.fail_after(5):
            async with queue.subscribe(job.id) as sub:
                first = await sub.__anext__()
                assert first.type is EventType.SNAPSHOT
                assert first.job == job
                store = queue.store
                [running] = await store.claim("w", types=["steps"], limit=1, lease=30, now=clock())
                token = lease_token(running)
                for fraction in (0.25, 0.5):
                    await store.set_progress(job.id, token, fraction, None, now=clock())
                await store.finish(
                    job.id, token, Outcome(JobStatus.COMPLETED, result=2), now=clock()
                )
                got = [event async for event in sub]
        types = [e.type for e in got]
        assert types[0] is EventType.STARTED
        assert types[-1] is EventType.COMPLETED
        assert set(types[1:-1]) <= {EventType.PROGRESS}
        versions = [e.job.version for e in [first, *got]]
        assert versions == sorted(set(versions))  # strictly increasing: deduped
        assert queue.bus.subscriber_count == 0  # ended after the final event


async def test_subscription_drops_versions_already_shown() -> None:
    clock = FakeClock()
    queue = make_queue(clock)
    async with queue:
        job = await queue.submit("steps")
        sub = queue.subscribe(job.id)
        async with sub:
            snapshot = await sub.__anext__()
            # An event the snapshot already covers (same version) must not be repeated.
            queue.bus.publish(JobEvent(EventType.CREATED, 1, clock(), job))
            cancelled = await queue.cancel(job.id)
            with anyio.fail_after(5):
                rest = [event async for event in sub]
        assert snapshot.job.version == job.version
        assert [e.type for e in rest] == [EventType.CANCELLED]
        assert rest[0].job == cancelled


async def test_whole_queue_subscription_snapshots_live_jobs_first() -> None:
    clock = FakeClock()
    queue = make_queue(clock)
    async with queue:
        first = await queue.submit("steps")
        second = await queue.submit("steps", delay=60)
        done = await queue.submit("steps")
        await queue.cancel(done.id)  # finished: not part of the snapshot
        async with queue.subscribe() as sub:
            with anyio.fail_after(5):
                snaps = [await sub.__anext__() for _ in range(2)]
                third = await queue.submit("steps")
                live = await sub.__anext__()
        assert [e.type for e in snaps] == [EventType.SNAPSHOT] * 2
        assert {e.job.id for e in snaps} == {first.id, second.id}
        assert live.type is EventType.CREATED
        assert live.job.id == third.id
        assert queue.bus.subscriber_count == 0


async def test_subscription_to_a_finished_job_yields_its_snapshot_and_ends() -> None:
    queue = make_queue()
    async with queue:
        job = await queue.submit("steps")
        cancelled = await queue.cancel(job.id)
        with anyio.fail_after(5):
            events = [event async for event in queue.subscribe(job.id)]
        assert [(e.type, e.job) for e in events] == [(EventType.SNAPSHOT, cancelled)]
        assert queue.bus.subscriber_count == 0


async def test_subscribing_to_an_unknown_job_raises_and_leaves_no_subscriber() -> None:
    queue = make_queue()
    async with queue:
        with pytest.raises(JobNotFound):
            async with queue.subscribe("01NOSUCHJOB0000000000000000"):
                pass  # pragma: no cover
        assert queue.bus.subscriber_count == 0
        sub = queue.subscribe("01NOSUCHJOB0000000000000000")
        with pytest.raises(JobNotFound):
            await sub.__anext__()
        assert queue.bus.subscriber_count == 0


async def test_leaving_a_subscription_early_unregisters() -> None:
    queue = make_queue()
    async with queue:
        job = await queue.submit("steps")
        async with queue.subscribe(job.id) as sub:
            await sub.__anext__()
            assert queue.bus.subscriber_count == 1
        assert queue.bus.subscriber_count == 0


async def test_one_wake_up_pass_per_filter_group_not_per_subscriber(
    make: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fan-out at thousands of subscribers: a publish wakes each filter group in one
    # pass over its waiting readers, computing the event's buffer key once.
    from asyncjobs import events as events_module

    passes = 0
    keys = 0
    real_wake = events_module._Group.wake
    real_key = events_module._key

    def counting_wake(self: Any) -> None:
        nonlocal passes
        passes += bool(self.waiters)
        real_wake(self)

    def counting_key(event: JobEvent) -> Any:
        nonlocal keys
        keys += 1
        return real_key(event)

    monkeypatch.setattr(events_module._Group, "wake", counting_wake)
    monkeypatch.setattr(events_module, "_key", counting_key)
    bus = EventBus()
    everyone = [bus.subscribe() for _ in range(50)]
    by_job = [bus.subscribe(job_id="j1") for _ in range(50)]
    other_job = bus.subscribe(job_id="j2")
    readers = everyone + by_job
    got: dict[int, list[int]] = {i: [] for i in range(len(readers))}
    rounds = 10

    async def read(i: int, sub: Subscriber) -> None:
        for _ in range(rounds):
            got[i].append((await sub.get()).seq)

    async def wait_for_nothing() -> None:
        with pytest.raises(anyio.EndOfStream):
            await other_job.get()

    async with anyio.create_task_group() as tg:
        for i, sub in enumerate(readers):
            tg.start_soon(read, i, sub)
        tg.start_soon(wait_for_nothing)  # nothing for j2 is published
        sent: list[int] = []
        for _ in range(rounds):
            await anyio.wait_all_tasks_blocked()
            event = make(EventType.PROGRESS, "j1")
            sent.append(event.seq)
            bus.publish(event)
        await anyio.wait_all_tasks_blocked()
        other_job.close()
    assert all(seqs == sent for seqs in got.values())
    # Two groups wait (everyone, job j1): one pass each per round; j2's never woke.
    assert passes == 2 * rounds
    assert keys == rounds  # once per event, not once per subscriber (1,000 here)


async def test_close_and_resync_wake_their_own_reader_alone(make: Events) -> None:
    bus = EventBus()
    subs = [bus.subscribe() for _ in range(20)]
    wakes = [0] * len(subs)
    ended = [False] * len(subs)

    async def read(i: int, sub: Subscriber) -> None:
        while True:
            events = sub.take()
            if events is None:  # a resync or the end to report
                ended[i] = True
                return
            await sub.wait()
            wakes[i] += 1

    async with anyio.create_task_group() as tg:
        for i, sub in enumerate(subs):
            tg.start_soon(read, i, sub)
        await anyio.wait_all_tasks_blocked()
        subs[0].close()
        await anyio.wait_all_tasks_blocked()
        subs[1].mark_resync()
        await anyio.wait_all_tasks_blocked()
        # Before, a close or a resync woke the whole group to find nothing new.
        assert wakes == [1, 1] + [0] * 18
        assert ended[:3] == [True, True, False]
        bus.publish(make(EventType.PROGRESS, "a"))
        await anyio.wait_all_tasks_blocked()
        assert wakes[2:] == [1] * 18
        for sub in subs[2:]:
            sub.close()


async def test_get_many_and_take_return_every_pending_event_in_order(make: Events) -> None:
    bus = EventBus(max_pending=100)
    sub = bus.subscribe()
    assert sub.take() == []
    sent = [make(EventType.CREATED, "a"), make(EventType.PROGRESS, "a")]
    sent += [make(EventType.COMPLETED, "b")]
    for event in sent:
        bus.publish(event)
    with anyio.fail_after(5):
        assert await sub.get_many() == sent
    assert sub.pending == 0
    bus.publish(sent[0])
    assert sub.take() == [sent[0]]
    sub.mark_resync()
    assert sub.take() is None  # the resync is for get_many to report
    with anyio.fail_after(5):
        assert await sub.get_many() is None
    sub.close()
    assert sub.take() is None
    with pytest.raises(anyio.EndOfStream):
        await sub.get_many()


async def test_a_coalesced_latest_event_moves_behind_the_others(make: Events) -> None:
    bus = EventBus(max_pending=2)
    sub = bus.subscribe()
    created = [make(EventType.CREATED, "a"), make(EventType.CREATED, "b")]
    started_a, started_b = make(EventType.STARTED, "a"), make(EventType.STARTED, "b")
    retry_a = make(EventType.RETRYING, "a")
    for event in (*created, started_a, started_b, retry_a):
        bus.publish(event)
    # a's newest version replaces its older pending one and goes to the end.
    assert sub.take() == [*created, started_b, retry_a]


async def test_next_batch_gives_in_one_go_what_one_at_a_time_would(make: Events) -> None:
    clock = FakeClock()
    queue = make_queue(clock)
    async with queue:
        job = await queue.submit("steps")
        async with queue.subscribe(job.id) as sub:
            with anyio.fail_after(5):
                [snapshot] = await sub.next_batch()
            assert snapshot.type is EventType.SNAPSHOT
            assert await sub.poll() == []  # nothing new, and it does not wait
            stale = JobEvent(EventType.CREATED, 1, clock(), job)  # the snapshot covers it
            [running] = await queue.store.claim(
                "w", types=["steps"], limit=1, lease=30, now=clock()
            )
            token = lease_token(running)
            for fraction in (0.25, 0.5):
                await queue.store.set_progress(job.id, token, fraction, None, now=clock())
            queue.bus.publish(stale)
            await queue.store.finish(
                job.id, token, Outcome(JobStatus.COMPLETED, result=2), now=clock()
            )
            with anyio.fail_after(5):
                batch = await sub.next_batch()
            # The two progress reports coalesced (pending at once); the stale one dropped.
            assert [e.type for e in batch] == [
                EventType.STARTED,
                EventType.PROGRESS,
                EventType.COMPLETED,
            ]
            assert batch[1].job.progress == 0.5
            with pytest.raises(StopAsyncIteration):  # a job stream ends after its final event
                await sub.next_batch()
        assert queue.bus.subscriber_count == 0


def test_wanted_says_whether_anyone_subscribes() -> None:
    bus = EventBus()
    assert not bus.wanted
    everything = bus.subscribe()
    one_job = bus.subscribe(job_id="j1")
    one_type = bus.subscribe(type="t")
    assert bus.wanted
    everything.close()
    one_job.close()
    assert bus.wanted  # the type's subscriber is left
    one_type.close()
    assert not bus.wanted
    again = bus.subscribe(job_id="j2")
    assert bus.wanted
    again.close()
    assert not bus.wanted
