"""The memory store's queued index: the same picks as sorting every queued job."""

from __future__ import annotations

from datetime import datetime, timezone

import attrs
from hypothesis import given
from hypothesis import strategies as st

from asyncjobs.job import Job, JobStatus
from asyncjobs.stores.memory.index import QueuedIndex

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)

# An operation: push a new job (type, priority), take one (types wanted, room per type),
# or make a queued job leave the queued state behind the index's back (a cancel).
push = st.tuples(st.just("push"), st.sampled_from("abc"), st.integers(-2, 2))
take = st.tuples(
    st.just("take"),
    st.sets(st.sampled_from("abc"), min_size=1),
    st.dictionaries(st.sampled_from("abc"), st.integers(0, 2), max_size=2),
)
leave = st.tuples(st.just("leave"), st.integers(0, 1000))
# A job that left the queued state comes back (a retry, a recovered lease): pushed again
# with its old id, behind newer ones in arrival order but ahead of them in id order.
back = st.tuples(st.just("back"), st.integers(0, 1000))


@given(st.lists(st.one_of(push, take, leave, back), max_size=80))
def test_the_index_picks_the_best_live_job_like_a_full_sort(ops: list[tuple]) -> None:
    _check(ops)


# One type and two priorities: old ids pushed back meet newer ones in the same level.
push_one = st.tuples(st.just("push"), st.just("a"), st.integers(0, 1))
take_one = st.tuples(st.just("take"), st.just({"a"}), st.just({}))


@given(st.lists(st.one_of(push_one, take_one, leave, back), max_size=60))
def test_jobs_pushed_back_go_before_newer_ones_of_their_priority(ops: list[tuple]) -> None:
    _check(ops)


def _check(ops: list[tuple]) -> None:
    index = QueuedIndex()
    jobs: dict[str, Job] = {}
    for n, op in enumerate(ops):
        if op[0] == "push":
            _, type_, priority = op
            job = Job(
                id=f"{n:04d}",
                type=type_,
                params={},
                status=JobStatus.QUEUED,
                created_at=T0,
                run_at=T0,
                priority=priority,
            )
            jobs[job.id] = job
            index.push(job)
        elif op[0] == "leave":
            queued = sorted(j.id for j in jobs.values() if j.status is JobStatus.QUEUED)
            if queued:
                gone = queued[op[1] % len(queued)]
                jobs[gone] = attrs.evolve(jobs[gone], status=JobStatus.CANCELLED)
        elif op[0] == "back":
            gone = sorted(j.id for j in jobs.values() if j.status is not JobStatus.QUEUED)
            if gone:
                again = gone[op[1] % len(gone)]
                jobs[again] = attrs.evolve(jobs[again], status=JobStatus.QUEUED)
                index.push(jobs[again])
        else:
            _, types, room = op
            live = [
                j
                for j in jobs.values()
                if j.status is JobStatus.QUEUED and j.type in types and room.get(j.type, 1) > 0
            ]
            want = min(live, key=lambda j: (-j.priority, j.id)).id if live else None
            got = index.pop(sorted(types), room, jobs)
            assert got == want
            if got is not None:
                jobs[got] = attrs.evolve(jobs[got], status=JobStatus.RUNNING)
