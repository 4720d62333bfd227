"""The job model: the transition table, advance(), the JSON codec, and ULID ordering."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncjobs import _ulid
from asyncjobs._ulid import UlidGenerator, new_ulid
from asyncjobs.codec import (
    dumps,
    event_from_record,
    event_to_record,
    event_to_wire,
    format_time,
    job_from_record,
    job_to_record,
    job_to_wire,
    parse_time,
)
from asyncjobs.errors import IllegalTransition
from asyncjobs.job import (
    TERMINAL,
    EventType,
    Job,
    JobError,
    JobEvent,
    JobStatus,
    Lease,
    advance,
    can_transition,
    make_event,
    make_lease,
    transition,
)

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
S = JobStatus

# The lifecycle of DESIGN.md, written out independently of job.py's table.
ALLOWED = {
    (S.SCHEDULED, S.QUEUED),
    (S.SCHEDULED, S.CANCELLED),
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.CANCELLED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.SCHEDULED),  # retry with backoff
    (S.RUNNING, S.QUEUED),  # requeue: lost lease or graceful shutdown
    (S.FAILED, S.QUEUED),  # retry in place (queue.retry)
    (S.CANCELLED, S.QUEUED),  # retry in place
}
PAIRS = [(a, b) for a in JobStatus for b in JobStatus if a is not b]


def make_job(status: JobStatus = S.QUEUED, **changes: Any) -> Job:
    changes.setdefault("params", {})
    return Job(id=new_ulid(), type="t", status=status, created_at=T0, run_at=T0, **changes)


# -- statuses and the transition table ---------------------------------------------


def test_statuses_and_terminal_set() -> None:
    assert [s.value for s in JobStatus] == [
        "scheduled",
        "queued",
        "running",
        "completed",
        "failed",
        "cancelled",
    ]
    assert {S.COMPLETED, S.FAILED, S.CANCELLED} == TERMINAL
    assert all(s.is_terminal == (s in TERMINAL) for s in JobStatus)
    assert str(S.RUNNING) == "running"
    assert S("queued") is S.QUEUED


@pytest.mark.parametrize(("old", "new"), PAIRS, ids=[f"{a.value}->{b.value}" for a, b in PAIRS])
def test_transition_table(old: JobStatus, new: JobStatus) -> None:
    allowed = (old, new) in ALLOWED
    assert can_transition(old, new) is allowed
    job = make_job(old)
    if allowed:
        nxt = advance(job, new)
        assert nxt.status is new
        assert nxt.version == job.version + 1
    else:
        with pytest.raises(IllegalTransition) as info:
            advance(job, new)
        assert (info.value.job_id, info.value.from_status, info.value.to_status) == (
            job.id,
            old.value,
            new.value,
        )
        assert info.value.code == "illegal_transition"


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_terminal_jobs_never_change(status: JobStatus) -> None:
    job = make_job(status)
    with pytest.raises(IllegalTransition):
        advance(job, progress=0.5)
    with pytest.raises(IllegalTransition):
        advance(job, status)
    # The only way out of a terminal state is an operator's retry in place.
    leaving = {other for other in JobStatus if can_transition(status, other)}
    assert leaving == (set() if status is S.COMPLETED else {S.QUEUED})


def test_advance_returns_a_new_version_and_leaves_the_old_one() -> None:
    job = make_job(S.RUNNING, version=4)
    nxt = advance(job, progress=0.25, message="a quarter")
    assert (nxt.status, nxt.progress, nxt.message, nxt.version) == (S.RUNNING, 0.25, "a quarter", 5)
    assert (job.progress, job.message, job.version) == (0.0, None, 4)
    # Naming the current status of a live job is a change without a status change.
    assert advance(job, S.RUNNING).version == 5


@given(
    progress=st.floats(0.0, 1.0),
    message=st.none() | st.text(max_size=5),
    attempts=st.integers(0, 5),
    tags=st.lists(st.text(max_size=3), max_size=3).map(tuple),
)
def test_advance_makes_the_record_evolve_would(
    progress: float, message: str | None, attempts: int, tags: tuple[str, ...]
) -> None:
    # advance copies slots instead of calling attrs.evolve (the worker's hot path): the
    # result must be the very record evolve makes, equal and frozen alike.
    lease = Lease("w", "tok", T0)
    job = make_job(S.QUEUED, priority=3, tags=("a",), lease=None)
    changes: dict[str, Any] = {"progress": progress, "message": message, "attempts": attempts}
    nxt = advance(job, S.RUNNING, tags=tags, lease=lease, **changes)
    want = attrs.evolve(job, status=S.RUNNING, version=2, tags=tags, lease=lease, **changes)
    assert nxt == want and type(nxt) is Job
    assert attrs.asdict(nxt, recurse=False) == attrs.asdict(want, recurse=False)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        nxt.progress = 0.5  # type: ignore[misc]


def test_advance_rejects_unknown_fields_and_keeps_the_old_version() -> None:
    job = make_job(S.RUNNING)
    with pytest.raises(TypeError, match="no_such_field"):
        advance(job, no_such_field=1)
    assert job.version == 1


def test_job_is_immutable_and_hides_its_lease() -> None:
    lease = Lease("worker-1", "secret-token", T0)
    job = make_job(S.RUNNING, lease=lease)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        job.status = S.FAILED  # type: ignore[misc]
    assert "secret-token" not in repr(job)
    assert job.is_terminal is False
    assert make_job(S.FAILED).is_terminal is True


def test_event_types() -> None:
    final = {e for e in EventType if e.is_final}
    assert final == {EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED, EventType.DELETED}
    assert str(EventType.PROGRESS) == "job_progress"
    assert EventType.SNAPSHOT.value == "job_snapshot"


# -- codec ---------------------------------------------------------------------------

WIRE_KEYS = {
    "id",
    "type",
    "params",
    "status",
    "priority",
    "progress",
    "message",
    "result",
    "error",
    "attempts",
    "max_attempts",
    "created_at",
    "run_at",
    "started_at",
    "finished_at",
    "version",
    "tags",
}


def full_job() -> Job:
    return make_job(
        S.RUNNING,
        params={"text": "héllo ✓", "n": [1, 2.5, None, {"deep": True}]},
        priority=-3,
        progress=0.5,
        message="half",
        result=None,
        error=JobError("ValueError", "bad", "Traceback (most recent call last): ..."),
        attempts=2,
        max_attempts=5,
        started_at=T0 + timedelta(seconds=1),
        timeout=12.5,
        retention=3600.0,
        idempotency_key="key-1",
        owner="alice",
        tags=("x", "y"),
        cancel_requested=True,
        version=7,
        lease=Lease("w", "tok", T0 + timedelta(seconds=31, microseconds=250)),
    )


def test_record_round_trip_through_json() -> None:
    job = full_job()
    record = json.loads(dumps(job_to_record(job)))
    assert job_from_record(record) == job
    assert record["status"] == "running"
    assert record["created_at"] == "2026-11-22T12:00:00+00:00"
    assert record["lease"]["token"] == "tok"


def test_wire_shape_hides_internal_fields() -> None:
    wire = json.loads(dumps(job_to_wire(full_job())))
    assert set(wire) >= WIRE_KEYS
    assert not {"lease", "owner", "idempotency_key", "retention"} & set(wire)
    assert wire["error"] == {
        "type": "ValueError",
        "message": "bad",
        "traceback": "Traceback (most recent call last): ...",
    }
    assert wire["tags"] == ["x", "y"]
    assert wire["finished_at"] is None


def test_event_shapes() -> None:
    event = JobEvent(EventType.PROGRESS, 42, T0, full_job())
    wire = json.loads(dumps(event_to_wire(event)))
    assert set(wire) == {"type", "seq", "at", "job"}
    assert (wire["type"], wire["seq"], wire["at"]) == ("job_progress", 42, format_time(T0))
    assert "lease" not in wire["job"]
    assert event_from_record(json.loads(dumps(event_to_record(event)))) == event


def test_time_parsing_and_formatting() -> None:
    assert parse_time("2026-11-22T12:00:00Z") == T0
    assert parse_time("2026-11-22T12:00:00") == T0  # naive means UTC
    assert parse_time("2026-11-22T13:30:00+01:30") == T0
    assert parse_time(T0.replace(tzinfo=None)) == T0
    assert parse_time(T0).tzinfo is timezone.utc
    plus_two = timezone(timedelta(hours=2))
    assert format_time(T0.astimezone(plus_two)) == "2026-11-22T12:00:00+00:00"


def test_dumps_is_compact_and_keeps_unicode() -> None:
    assert dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)
)


@given(
    status=st.sampled_from(JobStatus),
    params=st.dictionaries(st.text(max_size=5), json_values, max_size=4),
    result=json_values,
    created=times,
    finished=st.none() | times,
    tags=st.lists(st.text(max_size=5), max_size=3).map(tuple),
    lease=st.none() | st.builds(Lease, st.text(max_size=5), st.text(max_size=5), times),
    error=st.none() | st.builds(JobError, st.text(max_size=5), st.text(), st.none() | st.text()),
)
def test_record_round_trip_property(
    status: JobStatus,
    params: dict[str, Any],
    result: Any,
    created: datetime,
    finished: datetime | None,
    tags: tuple[str, ...],
    lease: Lease | None,
    error: JobError | None,
) -> None:
    job = Job(
        id=new_ulid(),
        type="t",
        params=params,
        status=status,
        created_at=created,
        run_at=created,
        finished_at=finished,
        result=result,
        tags=tags,
        lease=lease,
        error=error,
    )
    assert job_from_record(json.loads(dumps(job_to_record(job)))) == job


# -- ULIDs ---------------------------------------------------------------------------------


def decode_ms(ulid: str) -> int:
    value = 0
    for char in ulid:
        value = value * 32 + _ulid._ALPHABET.index(char)
    return value >> 80


def decode(ulid: str) -> int:
    value = 0
    for char in ulid:
        value = value * 32 + _ulid._ALPHABET.index(char)
    return value


@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_ulid_encoding_is_base32_of_the_128_bit_value(value: int) -> None:
    text = _ulid._encode(value)
    assert len(text) == 26
    assert decode(text) == value


def test_ulid_text_carries_the_generators_time_and_random_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_ulid, "time", SimpleNamespace(time_ns=lambda: 1_790_000_000_000_000_000))
    gen = UlidGenerator()
    first, second = gen.new(), gen.new()
    assert decode(first) == (1_790_000_000_000 << 80) | gen._last_rand - 1
    assert decode(second) == (1_790_000_000_000 << 80) | gen._last_rand


def test_ulid_shape() -> None:
    ulid = new_ulid()
    assert len(ulid) == 26
    assert set(ulid) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def test_ulids_strictly_increase() -> None:
    ids = [new_ulid() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ulid_encodes_time_and_stays_monotonic_when_time_stands_still_or_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1_790_000_000_000 * 1_000_000]  # ns
    monkeypatch.setattr(_ulid, "time", SimpleNamespace(time_ns=lambda: clock[0]))
    gen = UlidGenerator()
    first = gen.new()
    assert decode_ms(first) == 1_790_000_000_000
    same_ms = [gen.new() for _ in range(100)]
    clock[0] -= 5_000_000_000  # the wall clock steps back 5 s
    after_step_back = gen.new()
    clock[0] += 60_000_000_000
    later = gen.new()
    ids = [first, *same_ms, after_step_back, later]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert decode_ms(later) == 1_790_000_055_000


def test_ulid_random_part_overflow_moves_to_the_next_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_ulid, "time", SimpleNamespace(time_ns=lambda: 1_000 * 1_000_000))
    gen = UlidGenerator()
    first = gen.new()
    gen._last_rand = (1 << 80) - 1  # the next increment would overflow the random part
    nxt = gen.new()
    assert nxt > first
    assert decode_ms(nxt) == 1_001


def test_ulids_are_unique_across_threads() -> None:
    gen = UlidGenerator()
    per_thread: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(gen.new() for _ in range(2000))

    threads = [threading.Thread(target=make, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    everything = [i for out in per_thread for i in out]
    assert len(set(everything)) == 8000
    assert all(out == sorted(out) for out in per_thread)


def test_events_and_leases_built_as_drafts_are_the_frozen_records() -> None:
    # The memory store builds these on its hot path without the frozen __init__.
    job = make_job(S.RUNNING)
    event = make_event(EventType.STARTED, 7, T0, job)
    want = JobEvent(type=EventType.STARTED, seq=7, at=T0, job=job)
    assert event == want and type(event) is JobEvent
    lease = make_lease("w", "tok", T0)
    assert lease == Lease("w", "tok", T0) and type(lease) is Lease
    assert hash(lease) == hash(Lease("w", "tok", T0))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.seq = 8  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        lease.token = "other"  # type: ignore[misc]


def test_advance_is_right_for_every_set_and_order_of_changes() -> None:
    # advance keeps a copier per set of changed names (in the caller's order), up to a
    # bound; past it the generic copier serves. Every one makes what evolve makes.
    from asyncjobs import job as job_module

    names = ["progress", "message", "attempts", "priority", "tags", "owner", "retention"]
    values: dict[str, Any] = {
        "progress": 0.5,
        "message": "m",
        "attempts": 2,
        "priority": 9,
        "tags": ("t",),
        "owner": "o",
        "retention": 5.0,
    }
    base = make_job(S.RUNNING)
    for size in range(1, len(names) + 1):
        for start in range(len(names)):
            chosen = [names[(start + i) % len(names)] for i in range(size)]
            for order in (chosen, chosen[::-1]):
                changes = {name: values[name] for name in order}
                nxt = advance(base, **changes)
                assert nxt == attrs.evolve(base, version=2, **changes)
                assert type(nxt) is Job
    assert len(job_module._copiers) <= job_module._MAX_COPIERS
    with pytest.raises(TypeError, match="no_such_field"):
        advance(base, progress=0.1, no_such_field=1)


def test_a_prepared_transition_is_advance() -> None:
    step = transition("attempts", "lease")
    lease = Lease("w", "tok", T0)
    for old in S:
        job = make_job(old, attempts=1)
        for new in [None, *S]:
            try:
                want: Job | type[IllegalTransition] = advance(job, new, attempts=2, lease=lease)
            except IllegalTransition:
                want = IllegalTransition
            if want is IllegalTransition:
                with pytest.raises(IllegalTransition):
                    step(job, new, 2, lease)
            else:
                got = step(job, new, 2, lease)
                assert got == want and type(got) is Job
    for bad in [("no_such_field",), ("status",), ("version",)]:
        with pytest.raises(TypeError):
            transition(*bad)
