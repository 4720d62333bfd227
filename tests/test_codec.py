"""The job record codec (``codec.job_to_record`` / ``job_from_record``, written field by
field for speed) against cattrs' generic (un)structuring, which it replaced: the same
JSON text for every field of every snapshot the steps make, and equal jobs read back.
Also the PostgreSQL store's patches (the changed fields of a change)."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncjobs import codec
from asyncjobs.codec import RECORD_FIELDS, dumps, job_from_record, job_to_record, record_text
from asyncjobs.job import Job, JobError, JobStatus, Lease, Run, advance
from asyncjobs.stores import Outcome
from asyncjobs.stores.postgres.records import patch_of
from asyncjobs.stores.steps import (
    cancel_step,
    claim_step,
    expire_step,
    finish_step,
    progress_step,
    promote_step,
    retry_step,
)
from stores.test_conformance import at, make_job


def cattrs_record(job: Job) -> dict[str, Any]:
    """The record as cattrs made it before the codec was written by hand."""
    out: dict[str, Any] = codec._conv.unstructure(job)
    out["tags"] = list(job.tags)
    out["history"] = list(out["history"])
    return out


def cattrs_job(record: dict[str, Any]) -> Job:
    job: Job = codec._conv.structure(record, Job)
    return job


BOOM = JobError("ValueError", "boom", "Traceback (most recent call last): ...")


def _jobs() -> Iterator[Job]:
    yield make_job()
    yield make_job(
        "other",
        priority=-3,
        delay=5,
        max_attempts=4,
        key="k-1",
        owner="tenant",
        retention=3600,
        params={"n": 1, "nested": {"list": [1, 2.5, None, "é"]}},
        tags=("a", "b"),
        timeout=30,
    )
    yield attrs.evolve(make_job(), trace={"traceparent": "00-ab-cd-01"}, progress=1)


def _lives(job: Job) -> Iterator[Job]:
    """``job`` and every snapshot the store's steps make of it on the way."""
    yield job
    if job.status is JobStatus.SCHEDULED:
        job = promote_step(job)
        yield job
    running = claim_step(job, "worker-1", "tok", 30.0, at(1))
    yield running
    halfway = progress_step(running, "tok", 0.5, "half")
    yield halfway
    flagged, _ = cancel_step(halfway, at(2)) or (halfway, None)
    yield flagged
    for outcome in (
        Outcome(JobStatus.COMPLETED, result={"ok": [1, 2]}),
        Outcome(JobStatus.FAILED, error=BOOM),
        Outcome(JobStatus.SCHEDULED, error=BOOM, run_at=at(60)),
        Outcome(JobStatus.CANCELLED),
    ):
        ended, _ = finish_step(halfway, "tok", outcome, at(3))
        yield ended
    failed, _ = finish_step(running, "tok", Outcome(JobStatus.FAILED, error=BOOM), at(3))
    again = retry_step(failed, at(4))  # history gets the failed run
    yield again
    yield claim_step(again, "worker-2", "tok2", 30.0, at(5))
    yield expire_step(running, at(100))[0]
    yield advance(job, JobStatus.CANCELLED, finished_at=at(6))


def _snapshots() -> list[Job]:
    return [snapshot for job in _jobs() for snapshot in _lives(job)]


def test_every_field_of_job_is_known() -> None:
    assert {a.name for a in attrs.fields(Job)} == set(RECORD_FIELDS)
    assert list(RECORD_FIELDS) == [a.name for a in attrs.fields(Job)]


@pytest.mark.parametrize("job", _snapshots(), ids=lambda j: f"{j.status.value}-v{j.version}")
def test_records_are_the_cattrs_records(job: Job) -> None:
    assert dumps(job_to_record(job)) == dumps(cattrs_record(job))


@pytest.mark.parametrize("job", _snapshots(), ids=lambda j: f"{j.status.value}-v{j.version}")
def test_jobs_read_back_are_the_cattrs_jobs(job: Job) -> None:
    # Through JSON text, as rows arrive; repr catches an int where a float belongs.
    mine = job_from_record(json.loads(dumps(job_to_record(job))))
    theirs = cattrs_job(json.loads(dumps(cattrs_record(job))))
    assert mine == theirs == job
    assert repr(mine) == repr(theirs)
    assert repr(mine.lease) == repr(theirs.lease)


def test_a_record_written_by_the_server_reads_back_the_same() -> None:
    # jsonb prints 30.0 as 30.0 but an integral float sent as 30 comes back as 30.
    record = json.loads(dumps(job_to_record(make_job(timeout=30))))
    record["timeout"], record["progress"] = 30, 0
    assert repr(job_from_record(record)) == repr(cattrs_job(record))


def test_dumps_is_compact_json_and_refuses_what_json_refuses() -> None:
    value = {"a": "é", "b": [1, 2.5, None, True], "c": {"d": ""}}
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    with pytest.raises(TypeError):
        dumps({1, 2})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-3))]),
)
maybe_times = st.none() | times
errors = st.none() | st.builds(JobError, st.text(max_size=5), st.text(), st.none() | st.text())
runs = st.builds(
    Run, st.sampled_from(JobStatus), st.integers(0, 9), errors, maybe_times, maybe_times
)
jobs = st.builds(
    Job,
    id=st.text(min_size=1, max_size=30),
    type=st.text(max_size=8),
    params=st.dictionaries(st.text(max_size=5), json_values, max_size=4),
    status=st.sampled_from(JobStatus),
    created_at=times,
    run_at=times,
    priority=st.integers(-(2**40), 2**40),
    progress=st.floats(0.0, 1.0) | st.sampled_from([0, 1]),
    message=st.none() | st.text(max_size=8),
    result=json_values,
    error=errors,
    attempts=st.integers(0, 9),
    max_attempts=st.integers(1, 9),
    started_at=maybe_times,
    finished_at=maybe_times,
    timeout=st.none() | st.floats(0.001, 1e6) | st.integers(1, 600),
    retention=st.none() | st.floats(0.0, 1e9) | st.integers(0, 10**6),
    idempotency_key=st.none() | st.text(max_size=8),
    owner=st.none() | st.text(max_size=8),
    tags=st.lists(st.text(max_size=5), max_size=3).map(tuple),
    cancel_requested=st.booleans(),
    history=st.lists(runs, max_size=2).map(tuple),
    trace=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
    version=st.integers(1, 10**9),
    lease=st.none() | st.builds(Lease, st.text(max_size=5), st.text(max_size=24), times),
)


@given(job=jobs)
def test_the_codec_writes_and_reads_what_cattrs_did(job: Job) -> None:
    text = dumps(job_to_record(job))
    assert text == dumps(cattrs_record(job))
    assert job_from_record(json.loads(text)) == cattrs_job(json.loads(text)) == job


@pytest.mark.parametrize("job", _snapshots(), ids=lambda j: f"{j.status.value}-v{j.version}")
def test_record_text_is_the_records_json_for_every_snapshot(job: Job) -> None:
    assert record_text(job) == dumps(job_to_record(job))


#: Values a field may hold though its type says otherwise (attrs checks none): each one
#: must still come out as the encoder writes it (NaN, Infinity, true, a nested value).
odd_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=4)
    | st.lists(st.integers(), max_size=2)
)
_ODD_FIELDS = [
    "id",
    "type",
    "priority",
    "progress",
    "message",
    "attempts",
    "max_attempts",
    "timeout",
    "retention",
    "idempotency_key",
    "owner",
    "cancel_requested",
    "trace",
    "version",
]


@given(
    job=jobs,
    result=json_values | st.floats(),
    params=st.sampled_from([{}, [], {"a": float("nan")}]) | st.dictionaries(st.text(), json_values),
    odd=st.dictionaries(st.sampled_from(_ODD_FIELDS), odd_values, max_size=4),
    tags=st.sampled_from([(), [], ["x"], ("a", "\n")]),
)
def test_record_text_is_the_records_json(
    job: Job, result: Any, params: Any, odd: dict[str, Any], tags: Any
) -> None:
    job = attrs.evolve(job, result=result, params=params, tags=tags, **odd)
    assert record_text(job) == dumps(job_to_record(job))


@pytest.mark.parametrize("field", _ODD_FIELDS)
@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), True, False, 0, 2**70, 1.5, "é\n", None, [1]],
    ids=repr,
)
def test_record_text_writes_every_odd_scalar_as_the_encoder(field: str, value: Any) -> None:
    job = attrs.evolve(make_job(), **{field: value})
    assert record_text(job) == dumps(job_to_record(job))


outcomes = st.one_of(
    st.builds(Outcome, st.just(JobStatus.COMPLETED), result=json_values),
    st.builds(Outcome, st.just(JobStatus.FAILED), error=errors),
    st.builds(Outcome, st.just(JobStatus.CANCELLED), error=errors),
    st.builds(Outcome, st.just(JobStatus.SCHEDULED), error=errors, run_at=times),
    st.builds(Outcome, st.just(JobStatus.QUEUED)),
)


@given(
    job=jobs,
    outcome=outcomes,
    progress=st.none()
    | st.tuples(st.floats(0.0, 1.0) | st.sampled_from([0, 1]), st.none() | st.text()),
    cancel=st.booleans(),
)
def test_record_text_of_every_finish_is_the_records_json(
    job: Job, outcome: Outcome, progress: tuple[float, str | None] | None, cancel: bool
) -> None:
    """What a worker's finish writes: a claimed job (maybe with progress, a cancel
    request), ended every way a finish can end it."""
    queued = attrs.evolve(job, status=JobStatus.QUEUED, lease=None, cancel_requested=False)
    job = claim_step(queued, "worker-1", "tok", 30.0, at(1))
    if progress is not None:
        job = progress_step(job, "tok", *progress)
    if cancel:
        job, _ = cancel_step(job, at(2)) or (job, None)
    assert record_text(job) == dumps(job_to_record(job))
    ended, _ = finish_step(job, "tok", outcome, at(3))
    assert record_text(ended) == dumps(job_to_record(ended))


def _loaded(load: Any, text: bytes | str) -> Any:
    try:
        return ("value", load(text))
    except Exception as exc:
        return ("error", type(exc), str(exc))


@given(
    job=jobs,
    cut=st.integers(0, 600),
    extra=st.sampled_from(["", " ", "\n", "x", "}", '"', "é"]),
    kind=st.sampled_from([str, bytes, bytearray]),
    bom=st.sampled_from([b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE]),
)
def test_loads_reads_what_json_loads_reads(
    job: Job, cut: int, extra: str, kind: type, bom: bytes
) -> None:
    """The same value, or the same error, for records and for what is nearly one: cut
    short, with something after it, as bytes in another encoding."""
    whole = record_text(job)
    for text in (whole, whole + extra, whole[:cut] + extra, extra + whole):
        data: Any = text
        if kind is not str:
            encoding = "utf-16-le" if bom == codecs.BOM_UTF16_LE else "utf-8"
            data = kind(bom + text.encode(encoding))
        assert _loaded(codec.loads, data) == _loaded(json.loads, data)
    assert _loaded(codec.loads, None) == _loaded(json.loads, None)


def test_loads_reads_a_record_not_through_json_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    job = make_job()
    text = record_text(job)
    monkeypatch.setattr(json, "loads", None)  # the quick path must not need it
    assert codec.loads(text) == codec.loads(text.encode()) == job_to_record(job)


@given(job=jobs, missing=st.sampled_from(["history", "trace", "owner", "lease", "tags"]))
def test_a_record_without_a_field_reads_as_cattrs_read_it(job: Job, missing: str) -> None:
    older = job_to_record(job)
    del older[missing]  # as a release before that field wrote it, or the wire shape
    assert job_from_record(older) == cattrs_job(older)


def test_patches_turn_one_record_into_the_next() -> None:
    for job in _jobs():
        lives = list(_lives(job))
        for before in lives:
            for after in lives:
                merged = {**job_to_record(before), **patch_of(before, after)}
                assert merged == job_to_record(after)


def test_a_patch_names_only_what_changed() -> None:
    running = claim_step(make_job(), "w", "tok", 30.0, at(1))
    later = attrs.evolve(running, lease=attrs.evolve(running.lease, expires_at=at(99)))
    halfway = progress_step(later, "tok", 0.5, "half")
    # The lease is not part of a progress change: the stored one (maybe renewed) stays.
    assert set(patch_of(later, halfway)) == {"progress", "message", "version"}
    done, _ = finish_step(halfway, "tok", Outcome(JobStatus.COMPLETED, result=None), at(2))
    assert set(patch_of(halfway, done)) == {"status", "progress", "finished_at", "version", "lease"}
    assert patch_of(done, done) == {}
    assert patch_of(halfway, done)["finished_at"] == at(2).isoformat()
