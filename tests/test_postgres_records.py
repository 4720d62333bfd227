"""The PostgreSQL store's own record codec agrees with :mod:`asyncjobs.codec`.

``records.py`` encodes and decodes jobs field by field (cattrs cost more than the rest of
a no-op job's client time); these tests hold it to the codec's output, field for field
and type for type, and to every field ``Job`` has. No server needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from asyncjobs.codec import dumps, job_from_record, job_to_record
from asyncjobs.job import Job, JobError, JobStatus, advance
from asyncjobs.stores import Outcome
from asyncjobs.stores.postgres.records import KNOWN_FIELDS, job_of, patch_of, record_of
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
    assert {a.name for a in attrs.fields(Job)} == KNOWN_FIELDS


@pytest.mark.parametrize("job", _snapshots(), ids=lambda j: f"{j.status.value}-v{j.version}")
def test_records_are_the_codecs_records(job: Job) -> None:
    assert dumps(record_of(job)) == dumps(job_to_record(job))


@pytest.mark.parametrize("job", _snapshots(), ids=lambda j: f"{j.status.value}-v{j.version}")
def test_jobs_read_back_are_the_codecs_jobs(job: Job) -> None:
    # Through JSON text, as rows arrive; repr catches an int where a float belongs.
    record: dict[str, Any] = json.loads(dumps(job_to_record(job)))
    mine, theirs = job_of(record), job_from_record(json.loads(dumps(job_to_record(job))))
    assert mine == theirs == job
    assert repr(mine) == repr(theirs)
    assert repr(mine.lease) == repr(theirs.lease)


def test_a_record_written_by_the_server_reads_back_the_same() -> None:
    # jsonb prints 30.0 as 30.0 but an integral float sent as 30 comes back as 30.
    record = json.loads(dumps(job_to_record(make_job(timeout=30))))
    record["timeout"], record["progress"] = 30, 0
    assert repr(job_of(record)) == repr(job_from_record(record))


def test_patches_turn_one_record_into_the_next() -> None:
    for job in _jobs():
        lives = list(_lives(job))
        for before in lives:
            for after in lives:
                merged = {**record_of(before), **patch_of(before, after)}
                assert merged == record_of(after)


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
