"""A hypothesis state machine drives each store with random operations against a model.

Rules submit, claim, report progress, renew, cancel, let time pass, recover expired
leases, finish, promote, delete and purge, and try stale lease tokens. The model predicts
every result; after each step the invariants compare the whole store with it:

* no job is held by two live leases: every token is fresh, and a stale one is refused;
* terminal states are final: a finished job never changes again until it is deleted
  or retried in place (failed / cancelled -> queued, the only way out);
* nothing accepted disappears before ``delete`` or ``purge`` removes it;
* versions strictly increase: a visible change always bumps ``version``;
* ``stats`` equals the model's counts, and events arrive once per change, in seq order.

Each machine run owns one event loop (a blocking portal) and one fresh database.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, TypeVar

import anyio
import attrs
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from asyncjobs._ulid import new_ulid
from asyncjobs.errors import IllegalTransition, JobNotFound, LeaseLost, QueueFull
from asyncjobs.job import TERMINAL, EventType, Job, JobEvent, JobStatus
from asyncjobs.stores import Outcome, Store

from .conftest import Backend, Database

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
# Time moves in whole seconds and a lease is never a whole number of them, so an expiry
# never falls exactly on "now" (where "expired before now" is a matter of taste).
LEASE = 10.5
TYPES = ("a", "b")
TYPE_LIMITS = {"b": 1}
MAX_QUEUED = 5
Q, S, R = JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING
F, C = JobStatus.FAILED, JobStatus.CANCELLED
RETRYABLE = (F, C)
T = TypeVar("T")


@attrs.define
class Model:
    """What the model knows about one stored job."""

    id: str
    type: str
    priority: int
    status: JobStatus
    max_attempts: int
    run_at: datetime
    retention: float | None
    key: str | None
    version: int = 1
    attempts: int = 0
    cancel_requested: bool = False
    token: str | None = None
    lease_expires: datetime | None = None
    finished_at: datetime | None = None


class StoreMachine(RuleBasedStateMachine):
    """Drives one store; subclasses set ``backend``."""

    backend: ClassVar[Backend]

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self.database: Database = self.backend.new_database()
        self.store: Store = self.database.build()
        self.call(self.store.open)
        self.events: list[JobEvent] = []
        self.arrived: anyio.Event = self.portal.call(anyio.Event)
        self.portal.call(self.store.add_listener, self.record)
        self.now = T0
        self.model: dict[str, Model] = {}
        self.final: dict[str, Job] = {}  # the snapshot a job had when it became terminal
        self.last_seen: dict[str, Job] = {}
        self.tokens: set[str] = set()
        self.stale: list[tuple[str, str]] = []  # (job id, a token that lost its lease)
        self.changes = 0  # events the store must have published
        self.checked = 0  # events checked so far
        self.last_seq = 0
        self.event_versions: dict[str, int] = {}

    def call(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kw: Any) -> T:
        result: T = self.portal.call(functools.partial(func, *args, **kw))
        return result

    def record(self, event: JobEvent) -> None:
        """The store's listener; runs on the portal's event loop."""
        self.events.append(event)
        self.arrived.set()

    def teardown(self) -> None:
        try:
            self.call(self.store.close)
            self.call(self.database.destroy)
        finally:
            self._portal_cm.__exit__(None, None, None)

    # -- model helpers -------------------------------------------------------------

    def ids(self, *statuses: JobStatus) -> list[str]:
        return sorted(i for i, m in self.model.items() if not statuses or m.status in statuses)

    def changed(self, m: Model, status: JobStatus | None = None) -> None:
        m.version += 1
        self.changes += 1
        if status is not None:
            if m.status is R and status is not R:
                assert m.token is not None
                self.stale.append((m.id, m.token))
                m.token = m.lease_expires = None
            m.status = status
            if status in TERMINAL:
                m.finished_at = self.now

    def became(self, job: Job) -> None:
        """Check a job the store returned against the model, and remember it if final."""
        m = self.model[job.id]
        assert (job.status, job.version, job.attempts) == (m.status, m.version, m.attempts)
        assert job.cancel_requested == m.cancel_requested
        if job.status in TERMINAL:
            self.final[job.id] = job

    # -- rules ---------------------------------------------------------------------

    @rule(
        type_=st.sampled_from(TYPES),
        priority=st.integers(0, 2),
        delay=st.sampled_from([0, 0, 5, 20]),
        max_attempts=st.integers(1, 3),
        key=st.sampled_from([None, None, "k1", "k2"]),
        retention=st.sampled_from([None, 30.0]),
        limited=st.booleans(),
    )
    def submit(
        self,
        type_: str,
        priority: int,
        delay: int,
        max_attempts: int,
        key: str | None,
        retention: float | None,
        limited: bool,
    ) -> None:
        job = Job(
            id=new_ulid(),
            type=type_,
            params={"n": len(self.model)},
            status=S if delay else Q,
            created_at=self.now,
            run_at=self.now + timedelta(seconds=delay),
            priority=priority,
            max_attempts=max_attempts,
            idempotency_key=key,
            retention=retention,
        )
        holder = next((m for m in self.model.values() if key and m.key == key), None)
        waiting = len(self.ids(Q, S))
        max_queued = MAX_QUEUED if limited else None
        if holder is None and limited and waiting >= MAX_QUEUED:
            with pytest.raises(QueueFull):
                self.call(self.store.add, job, max_queued=max_queued)
            return
        stored, created = self.call(self.store.add, job, max_queued=max_queued)
        if holder is not None:
            assert not created
            assert stored.id == holder.id
            return
        assert created
        assert stored == job
        self.model[job.id] = Model(
            job.id, type_, priority, job.status, max_attempts, job.run_at, retention, key
        )
        self.changes += 1

    @rule(
        worker=st.sampled_from(["w1", "w2"]),
        types=st.sampled_from([("a",), ("b",), ("a", "b")]),
        limit=st.integers(1, 3),
    )
    def claim(self, worker: str, types: tuple[str, ...], limit: int) -> None:
        room = {
            t: n - sum(1 for i in self.ids(R) if self.model[i].type == t)
            for t, n in TYPE_LIMITS.items()
        }
        candidates = sorted(
            (m for m in self.model.values() if m.status is Q and m.type in types),
            key=lambda m: (-m.priority, m.id),
        )
        expected: list[str] = []
        for m in candidates:
            if len(expected) == limit:
                break
            if room.get(m.type, 1) <= 0:
                continue
            if m.type in room:
                room[m.type] -= 1
            expected.append(m.id)
        got = self.call(
            self.store.claim,
            worker,
            types=list(types),
            limit=limit,
            lease=LEASE,
            now=self.now,
            type_limits=TYPE_LIMITS,
        )
        assert sorted(j.id for j in got) == sorted(expected)
        for job in got:
            assert job.lease is not None
            assert job.lease.worker_id == worker
            assert job.lease.token not in self.tokens, "a fencing token was handed out twice"
            self.tokens.add(job.lease.token)
            m = self.model[job.id]
            m.attempts += 1
            self.changed(m, R)
            m.token = job.lease.token
            m.lease_expires = self.now + timedelta(seconds=LEASE)
            self.became(job)

    @precondition(lambda self: bool(self.ids(R)))
    @rule(data=st.data(), value=st.floats(0.0, 1.0))
    def progress(self, data: st.DataObject, value: float) -> None:
        m = self.model[data.draw(st.sampled_from(self.ids(R)))]
        job = self.call(self.store.set_progress, m.id, m.token, value, "step", now=self.now)
        self.changed(m)
        self.became(job)
        assert job.progress == value

    @precondition(lambda self: bool(self.ids(R)))
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        m = self.model[data.draw(st.sampled_from(self.ids(R)))]
        job = self.call(self.store.renew, m.id, m.token, lease=LEASE, now=self.now)
        m.lease_expires = self.now + timedelta(seconds=LEASE)
        self.became(job)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        m = self.model[data.draw(st.sampled_from(self.ids()))]
        if m.status in TERMINAL:
            with pytest.raises(IllegalTransition):
                self.call(self.store.request_cancel, m.id, now=self.now)
            return
        job = self.call(self.store.request_cancel, m.id, now=self.now)
        if m.status is R:
            if not m.cancel_requested:
                m.cancel_requested = True
                self.changed(m)
        else:
            self.changed(m, JobStatus.CANCELLED)
        self.became(job)

    @rule(seconds=st.sampled_from([1, 4, 11]))
    def tick(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule()
    def requeue_expired(self) -> None:
        due = [i for i in self.ids(R) if self.model[i].lease_expires <= self.now]  # type: ignore[operator]
        got = self.call(self.store.requeue_expired, now=self.now)
        assert sorted(j.id for j in got) == due
        for job in got:
            m = self.model[job.id]
            if m.cancel_requested:
                self.changed(m, JobStatus.CANCELLED)
            elif m.attempts < m.max_attempts:
                self.changed(m, Q)
            else:
                self.changed(m, JobStatus.FAILED)
            self.became(job)
            if job.status is not JobStatus.CANCELLED:
                assert job.error is not None
                assert job.error.type == "LeaseExpired"

    @rule()
    def promote(self) -> None:
        due = [i for i in self.ids(S) if self.model[i].run_at <= self.now]
        got = self.call(self.store.promote_scheduled, now=self.now)
        assert sorted(j.id for j in got) == due
        for job in got:
            self.changed(self.model[job.id], Q)
            self.became(job)

    @precondition(lambda self: bool(self.ids(R)))
    @rule(
        data=st.data(),
        kind=st.sampled_from(["completed", "failed", "cancelled", "retry", "requeue"]),
    )
    def finish(self, data: st.DataObject, kind: str) -> None:
        m = self.model[data.draw(st.sampled_from(self.ids(R)))]
        outcome = {
            "completed": Outcome(JobStatus.COMPLETED, result={"ok": m.id}),
            "failed": Outcome(JobStatus.FAILED),
            "cancelled": Outcome(JobStatus.CANCELLED),
            "retry": Outcome(S, run_at=self.now + timedelta(seconds=3)),
            "requeue": Outcome(Q),
        }[kind]
        assert m.token is not None
        job = self.call(self.store.finish, m.id, m.token, outcome, now=self.now)
        status = outcome.status
        if kind in ("retry", "requeue") and m.cancel_requested:
            status = JobStatus.CANCELLED  # a cancel request wins over another attempt
        elif kind == "retry":
            m.run_at = self.now + timedelta(seconds=3)
        elif kind == "requeue":
            m.attempts -= 1
        self.changed(m, status)
        self.became(job)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        m = self.model[data.draw(st.sampled_from(self.ids()))]
        if m.status not in RETRYABLE:
            with pytest.raises(IllegalTransition):
                self.call(self.store.retry, m.id, now=self.now)
            return
        job = self.call(self.store.retry, m.id, now=self.now)
        self.retried(m)
        self.became(job)
        assert job.history[-1].attempts == self.final.pop(m.id, job).attempts

    @rule(
        statuses=st.sampled_from([(F,), (C,), (F, C)]),
        types=st.sampled_from([None, ("a",), ("b",)]),
    )
    def retry_many(self, statuses: tuple[JobStatus, ...], types: tuple[str, ...] | None) -> None:
        due = [i for i in self.ids(*statuses) if types is None or self.model[i].type in types]
        got = self.call(self.store.retry_many, now=self.now, statuses=statuses, types=types)
        assert [j.id for j in got] == due
        for job in got:
            self.retried(self.model[job.id])
            self.final.pop(job.id, None)
            self.became(job)

    def retried(self, m: Model) -> None:
        m.attempts = 0
        m.cancel_requested = False
        m.finished_at = None
        m.run_at = self.now
        self.changed(m, Q)

    @precondition(lambda self: bool(self.stale))
    @rule(data=st.data(), op=st.sampled_from(["finish", "progress", "renew"]))
    def use_a_stale_token(self, data: st.DataObject, op: str) -> None:
        job_id, stale = data.draw(st.sampled_from(self.stale))
        error = LeaseLost if job_id in self.model else JobNotFound
        attempt: Callable[[], Coroutine[Any, Any, Job]] = {
            "finish": functools.partial(
                self.store.finish, job_id, stale, Outcome(JobStatus.COMPLETED), now=self.now
            ),
            "progress": functools.partial(
                self.store.set_progress, job_id, stale, 0.5, None, now=self.now
            ),
            "renew": functools.partial(self.store.renew, job_id, stale, lease=LEASE, now=self.now),
        }[op]
        with pytest.raises(error):
            self.portal.call(attempt)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        m = self.model[data.draw(st.sampled_from(self.ids()))]
        if m.status not in TERMINAL:
            with pytest.raises(IllegalTransition):
                self.call(self.store.delete, m.id, now=self.now)
            return
        job = self.call(self.store.delete, m.id, now=self.now)
        assert job == self.final[m.id]
        self.forget(m)

    @rule(expired=st.booleans(), before=st.sampled_from([None, 0, 10]))
    def purge(self, expired: bool, before: int | None) -> None:
        finished_before = None if before is None else self.now - timedelta(seconds=before)
        doomed = []
        for m in self.model.values():
            if m.status not in TERMINAL:
                continue
            assert m.finished_at is not None
            if finished_before is not None and m.finished_at >= finished_before:
                continue
            if expired and (
                m.retention is None or m.finished_at + timedelta(seconds=m.retention) > self.now
            ):
                continue
            doomed.append(m)
        count = self.call(
            self.store.purge, now=self.now, finished_before=finished_before, expired=expired
        )
        assert count == len(doomed)
        for m in doomed:
            self.forget(m)

    def forget(self, m: Model) -> None:
        del self.model[m.id]
        self.final.pop(m.id, None)
        self.last_seen.pop(m.id, None)
        self.changes += 1  # job_deleted

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        page = self.call(self.store.list, limit=10_000)
        assert page.next_cursor is None
        jobs = {j.id: j for j in page.jobs}
        # Nothing accepted disappears before delete/purge, and nothing else appears.
        assert sorted(jobs) == self.ids()
        live_tokens = []
        for job_id, job in jobs.items():
            m = self.model[job_id]
            assert (job.status, job.version, job.attempts) == (m.status, m.version, m.attempts)
            assert job.cancel_requested == m.cancel_requested
            if job.status is S:
                assert job.run_at == m.run_at
            if job.status is R:
                assert job.lease is not None
                assert job.lease.token == m.token
                assert job.lease.expires_at == m.lease_expires
                live_tokens.append(job.lease.token)
            else:
                assert job.lease is None
            # Terminal states are final.
            if job_id in self.final:
                assert job == self.final[job_id]
            # A visible change always comes with a higher version.
            last = self.last_seen.get(job_id)
            if last is not None:
                assert job.version >= last.version
                if job.version == last.version:
                    assert attrs.evolve(job, lease=None) == attrs.evolve(last, lease=None)
            self.last_seen[job_id] = job
        # No job is held under two leases; no token serves two jobs.
        assert len(live_tokens) == len(set(live_tokens))

    @invariant()
    def stats_match_model(self) -> None:
        stats = self.call(self.store.stats)
        expected = Counter(m.status for m in self.model.values())
        assert {s: n for s, n in stats.counts.items() if n} == dict(expected)
        by_type: dict[str, Counter[JobStatus]] = {}
        for m in self.model.values():
            by_type.setdefault(m.type, Counter())[m.status] += 1
        got = {t: {s: n for s, n in c.items() if n} for t, c in stats.by_type.items()}
        assert {t: c for t, c in got.items() if c} == {t: dict(c) for t, c in by_type.items()}

    @invariant()
    def one_event_per_change(self) -> None:
        """Exactly one event per change, in seq order; a job's carry versions 1, 2, 3..."""

        async def arrived() -> None:
            with anyio.fail_after(5):  # a server-backed store delivers asynchronously
                while len(self.events) < self.changes:
                    await self.arrived.wait()
                    self.arrived = anyio.Event()

        self.portal.call(arrived)
        assert len(self.events) == self.changes, "an event was published twice"
        for event in self.events[self.checked :]:
            assert event.seq > self.last_seq, "event seq must strictly increase"
            self.last_seq = event.seq
            previous = self.event_versions.get(event.job.id, 0)
            if event.type is EventType.DELETED:
                assert event.job.version == previous
            else:
                assert event.job.version == previous + 1, (event.type, event.job.id)
                self.event_versions[event.job.id] = event.job.version
        self.checked = len(self.events)


@pytest.mark.timeout(300)
def test_store_state_machine(backend: Backend) -> None:
    machine = type(f"StoreMachine_{backend.kind}", (StoreMachine,), {"backend": backend})
    many = backend.kind == "memory"
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=100 if many else 25,
            stateful_step_count=50 if many else 30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
