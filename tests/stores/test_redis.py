"""The Redis store across real processes and a real server restart.

* two ``asyncjobs worker`` processes share one queue; one is killed with SIGKILL mid-run:
  every job still completes, each finished by the holder of its last lease;
* a private ``redis-server`` (AOF, ``appendfsync always``) restarts under a live queue:
  nothing it acknowledged is lost, and workers and subscribers carry on by themselves;
* a web process (``asyncjobs serve``) and a worker process: the web process's SSE stream
  sees the worker's progress and the completion;
* the stream trimmed past what a store has seen makes it signal resync.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest
from httpx_sse import aconnect_sse

from asyncjobs import Job, JobStatus, Queue
from asyncjobs.job import EventType, JobEvent
from asyncjobs.stores import open_store
from asyncjobs.stores.redis import RedisStore

from .conftest import destroy_redis_prefix, script_calls

pytestmark = [pytest.mark.redis]

TESTS = Path(__file__).parent.parent
sys.path.insert(0, str(TESTS))
from cli_server import cli_server  # noqa: E402
from pg_worker_app import build  # noqa: E402
from servers import own_redis  # noqa: E402
from test_postgres_multiprocess import _pid_of, running_by_pid, until, web  # noqa: E402


@pytest.fixture
async def url(redis_url: str) -> AsyncIterator[str]:
    prefix = f"aj_mp_{uuid.uuid4().hex[:16]}"
    yield f"{redis_url}?prefix={prefix}"
    await destroy_redis_prefix(redis_url, prefix)


@contextmanager
def workers(
    url: str, count: int, tmp_path: Path, lease: float
) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {**os.environ, "ASYNCJOBS_MP_URL": url, "ASYNCJOBS_MP_LEASE": str(lease)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            with (tmp_path / f"worker{i}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "asyncjobs", "worker", "redis_apps:build"],
                        cwd=TESTS,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_open_store_reads_the_prefix() -> None:
    store = open_store("redis://127.0.0.1:6379/2?prefix=billing")
    assert isinstance(store, RedisStore)
    assert store.prefix == "billing"
    assert store.redis_url == "redis://127.0.0.1:6379/2"
    assert isinstance(open_store("rediss://h:6380/0"), RedisStore)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_killed_worker_loses_no_job_and_finishes_none_stale(
    url: str, tmp_path: Path
) -> None:
    lease = 2.0
    async with web(url) as (queue, events):
        with workers(url, 2, tmp_path, lease) as procs:
            pids = {p.pid for p in procs}
            jobs = [await queue.submit("steps", {"steps": 10, "pause": 0.1}) for _ in range(16)]
            await until(lambda: set(running_by_pid(events)) == pids, 60, "both workers busy")
            victim = procs[0]
            killed_jobs = running_by_pid(events)[victim.pid]
            os.kill(victim.pid, signal.SIGKILL)
            with anyio.fail_after(90):
                done = [await queue.wait(job.id) for job in jobs]
            await until(
                lambda: sum(e.type is EventType.COMPLETED for e in events) >= len(jobs),
                10,
                "every completion streamed",
            )
    assert [job.status for job in done] == [JobStatus.COMPLETED] * len(jobs)
    last_holder: dict[str, int] = {}
    for event in events:
        if event.type is EventType.STARTED:
            last_holder[event.job.id] = _pid_of(event.job)
    for job in done:  # fencing: finished by the holder of its last lease
        assert job.result["pid"] == last_holder[job.id], job.id
        assert job.result["attempt"] == job.attempts
    assert killed_jobs
    for job in done:
        if job.id in killed_jobs:
            assert job.attempts >= 2
            assert job.result["pid"] != victim.pid


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_redis_restart_loses_nothing_and_everyone_carries_on(tmp_path: Path) -> None:
    with own_redis() as server:
        url = server.url + "?prefix=restart"
        queue = build(concurrency=2, url=url)
        async with queue:
            before = [await queue.submit("steps", {"steps": 3, "pause": 0.05}) for _ in range(4)]
            for job in before:
                assert (await queue.wait(job.id, timeout=30)).status is JobStatus.COMPLETED
            waiting = await queue.submit("steps", {"steps": 2, "pause": 0.05}, delay=2.0)
            await anyio.to_thread.run_sync(lambda: server.restart(down_for=1.0))
            # Acknowledged before the restart: still there (AOF), and nothing was redone.
            for job in before:
                got = await queue.get(job.id)
                assert (got.status, got.attempts) == (JobStatus.COMPLETED, 1)
            # The worker, the janitor and the event stream reconnect by themselves.
            after = await queue.submit("steps", {"steps": 3, "pause": 0.05})
            with anyio.fail_after(30):
                done = await queue.wait(after.id)
                promoted = await queue.wait(waiting.id)
            assert done.status is JobStatus.COMPLETED
            assert promoted.status is JobStatus.COMPLETED
            stats = await queue.stats()
            assert stats.counts[JobStatus.COMPLETED] == 6


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sse_in_the_web_process_sees_a_worker_process_progress(url: str, tmp_path: Path) -> None:
    env = {"ASYNCJOBS_MP_URL": url, "ASYNCJOBS_MP_LEASE": "5"}
    with (
        workers(url, 1, tmp_path, 5.0),
        cli_server(
            ["serve", "redis_apps:web"], cwd=TESTS, env=env, log=tmp_path / "web.log"
        ) as base,
    ):

        async def watch() -> list[dict[str, object]]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                reply = await client.post(
                    "/jobs", json={"type": "steps", "params": {"steps": 4, "pause": 0.1}}
                )
                assert reply.status_code in (201, 202), reply.text
                job_id = reply.json()["id"]
                with anyio.fail_after(60):
                    async with aconnect_sse(client, "GET", f"/jobs/{job_id}/events") as source:
                        return [json.loads(sse.data) async for sse in source.aiter_sse()]

        events = anyio.run(watch)
    types = [e["type"] for e in events]
    assert "job_progress" in types, types
    assert types[-1] == "job_completed", types
    final = events[-1]["job"]
    assert isinstance(final, dict)
    assert final["status"] == "completed"
    assert final["result"]["attempt"] == 1  # type: ignore[index]


async def test_a_trimmed_stream_makes_the_store_resync(redis_url: str) -> None:
    prefix = f"aj_trim_{uuid.uuid4().hex[:12]}"
    reader = RedisStore(redis_url, prefix=prefix, stream_maxlen=10)
    writer = RedisStore(redis_url, prefix=prefix, stream_maxlen=10)
    resyncs: list[int] = []
    try:
        await reader.open()
        await writer.open()
        reader.add_resync_listener(lambda: resyncs.append(1))
        queue = Queue(writer, concurrency=0)
        queue.registry.job_type("t")(_noop)
        # The reader's tail is stopped while far more than maxlen events are written.
        tail = reader._tail
        assert tail is not None
        await tail.stop()
        async with queue:
            for _ in range(300):
                await queue.submit("t", {})
        assert resyncs == []
        await tail.start()
        await queue_event(writer)
        await until(lambda: resyncs, 10, "a resync")
    finally:
        await reader.close()
        await writer.close()
        await destroy_redis_prefix(redis_url, prefix)


async def _noop(ctx: object, params: dict[str, object]) -> None:
    return None


async def queue_event(store: RedisStore) -> Job:
    queue = Queue(store, concurrency=0)
    queue.registry.job_type("t")(_noop)
    async with queue:
        return await queue.submit("t", {})


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_demo_runs_on_redis(url: str) -> None:
    with cli_server(["demo", "--store", url]) as base:
        reply = httpx.post(
            base + "jobs?wait=20", json={"type": "echo", "params": {"message": "hi"}}
        )
        assert reply.status_code in (200, 201, 202), reply.text
        job = reply.json()
        assert job["status"] == "completed", job
        # The job is in Redis under the URL's prefix, not in memory.
        stats = httpx.get(base + "stats").json()
        assert stats["counts"]["completed"] >= 1, stats


async def test_idempotency_keys_are_unique_per_owner(redis_url: str) -> None:
    from datetime import datetime, timezone

    from asyncjobs._ulid import new_ulid

    prefix = f"aj_idem_{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix)
    now = datetime.now(timezone.utc)

    def job(owner: str) -> Job:
        return Job(
            id=new_ulid(), type="t", params={}, status=JobStatus.QUEUED, created_at=now,
            run_at=now, idempotency_key="same", owner=owner,
        )  # fmt: skip

    try:
        await store.open()
        a, created_a = await store.add(job("ann"))
        b, created_b = await store.add(job("bob"))
        again, created_again = await store.add(job("ann"))
        assert (created_a, created_b, created_again) == (True, True, False)
        assert b.id != a.id
        assert again.id == a.id
    finally:
        await store.close()
        await destroy_redis_prefix(redis_url, prefix)


async def test_dead_worker_records_leave_redis_on_the_next_heartbeat(redis_url: str) -> None:
    from datetime import datetime, timedelta, timezone

    import redis.asyncio as aioredis

    from asyncjobs.stores import WorkerInfo

    prefix = f"aj_reg_{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def info(worker_id: str, beat: float) -> WorkerInfo:
        at = t0 + timedelta(seconds=beat)
        return WorkerInfo(
            id=worker_id, host="h", pid=1, types=("t",), slots=1, running=(),
            started_at=t0, last_heartbeat=at, expires_at=at + timedelta(seconds=10),
        )  # fmt: skip

    client = aioredis.Redis.from_url(redis_url)
    try:
        await store.open()
        await store.register_worker(info("dead", 0))
        await store.register_worker(info("alive", 0))
        await store.register_worker(info("alive", 20))  # "dead" expired at 10
        records = "{" + prefix + "}:workers"
        assert sorted(await client.hkeys(records)) == [b"alive"]
        assert await client.zrange(records + ":exp", 0, -1) == [b"alive"]
        await store.remove_worker("alive")
        assert await client.exists(records, records + ":exp") == 0
    finally:
        await client.aclose()
        await store.close()
        await destroy_redis_prefix(redis_url, prefix)


async def test_a_job_retried_in_place_leaves_the_finished_indexes(redis_url: str) -> None:
    """Retry is the first move out of a terminal status that keeps the job: its
    finished-at and retention entries must go (purge scans those indexes)."""
    from datetime import datetime, timezone

    import redis.asyncio as aioredis

    from asyncjobs._ulid import new_ulid
    from asyncjobs.stores import Outcome

    prefix = f"aj_retry_{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix)
    client = aioredis.Redis.from_url(redis_url)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    job = Job(
        id=new_ulid(), type="t", params={}, status=JobStatus.QUEUED, created_at=now,
        run_at=now, retention=60.0,
    )  # fmt: skip
    p = "{" + prefix + "}:"
    try:
        await store.open()
        await store.add(job)
        (running,) = await store.claim("w", types=["t"], limit=1, lease=30, now=now)
        assert running.lease is not None
        await store.finish(job.id, running.lease.token, Outcome(JobStatus.FAILED), now=now)
        assert await client.zscore(p + "finished", job.id) is not None
        assert await client.zscore(p + "expiry", job.id) is not None
        await store.retry(job.id, now=now)
        assert await client.zscore(p + "finished", job.id) is None
        assert await client.zscore(p + "expiry", job.id) is None
        assert await client.zscore(p + "ready:t", job.id) is not None
    finally:
        await client.aclose()
        await store.close()
        await destroy_redis_prefix(redis_url, prefix)


async def test_a_submit_stores_what_the_commit_script_stores(redis_url: str) -> None:
    """ADD (a submit) and COMMIT (a new job made elsewhere) write the same hash, index
    scores and event; the scores are the text the scripts once printed from numbers
    ('-0' for priority 0), and an id that exists is refused with nothing written."""
    import redis.asyncio as aioredis

    prefix = f"aj_add_{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix)
    client = aioredis.Redis.from_url(redis_url)
    p = "{" + prefix + "}:"

    async def score(key: str, member: str) -> bytes:  # as the server prints it
        return await client.eval("return redis.call('ZSCORE', KEYS[1], ARGV[1])", 1, key, member)

    try:
        await store.open()
        for priority, stored in ((0, b"0"), (5, b"-5"), (-3, b"3")):
            by_add, by_commit = _queued(priority=priority), _queued(priority=priority)
            await store.add(by_add)
            args = store._commit_args(0, by_commit, EventType.CREATED, by_commit.created_at)
            ((code, _),) = await store._commit([args])
            assert code == 1
            for job in (by_add, by_commit):
                assert await score(p + "ready:t", job.id) == stored
                assert await score(p + "ids", job.id) == b"0"
                assert await score(p + "st:queued", job.id) == b"0"
            hashes = [await client.hgetall(p + "job:" + j.id) for j in (by_add, by_commit)]
            assert [{k: v for k, v in h.items() if k != b"d"} for h in hashes] == [
                {b"v": b"1", b"s": b"queued", b"t": b"t"}
            ] * 2
        entries = await client.xrange(p + "events")
        assert [int(f[b"q"]) for _, f in entries] == list(range(1, 7))
        assert {tuple(f) for _, f in entries} == {(b"q", b"t", b"a", b"i", b"d")}
        assert await client.hgetall(p + "counts") == {b"queued|t": b"6"}

        taken = attrs.evolve(_queued(), id=by_add.id, params={"other": 1})
        with pytest.raises(ValueError, match="exists already"):
            await store.add(taken)
        assert await client.hgetall(p + "counts") == {b"queued|t": b"6"}
        assert await client.zcard(p + "ids") == 6
        assert await client.xlen(p + "events") == 6
        assert (await store.get(by_add.id)).params == {}
    finally:
        await client.aclose()
        await store.close()
        await destroy_redis_prefix(redis_url, prefix)


async def test_the_leases_pin_keeps_a_skiplist_and_is_never_swept(redis_url: str) -> None:
    """The claim script keeps a member that is no job at +inf in ``leases`` (see
    scripts.PIN): the sweep requeues exactly the expired jobs around it. A claim of
    several jobs leaves ``st:running`` a skiplist holding exactly the jobs."""
    from datetime import timedelta

    import redis.asyncio as aioredis

    from asyncjobs.stores.redis.scripts import PIN

    prefix = f"aj_pin_{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix)
    client = aioredis.Redis.from_url(redis_url)
    p = "{" + prefix + "}:"
    jobs = [_queued() for _ in range(6)]
    now = jobs[0].created_at
    try:
        await store.open()
        await store.add_many(jobs)
        running = await store.claim("w", types=["t"], limit=5, lease=30, now=now)
        assert [j.id for j in running] == [j.id for j in jobs[:5]]
        assert await client.object("encoding", p + "st:running") == b"skiplist"
        assert await client.zrange(p + "st:running", 0, -1) == [j.id.encode() for j in running]
        assert await client.object("encoding", p + "leases") == b"skiplist"
        assert await client.zscore(p + "leases", PIN) == float("inf")
        assert await store.requeue_expired(now=now + timedelta(seconds=29)) == []
        later = now + timedelta(days=365 * 100)
        assert {j.id for j in await store.requeue_expired(now=later)} == {j.id for j in running}
        assert await client.zrange(p + "leases", 0, -1) == [PIN.encode()]
        assert (await store.stats()).counts[JobStatus.RUNNING] == 0
        again = await store.claim("w", types=["t"], limit=5, lease=30, now=later)
        assert jobs[5].id in {j.id for j in again}
        assert await client.zcard(p + "leases") == len(again) + 1
    finally:
        await client.aclose()
        await store.close()
        await destroy_redis_prefix(redis_url, prefix)


def _queued(type_: str = "t", *, priority: int = 0, max_attempts: int = 1) -> Job:
    from datetime import datetime, timezone

    from asyncjobs._ulid import new_ulid

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return Job(
        id=new_ulid(), type=type_, params={}, status=JobStatus.QUEUED, created_at=now,
        run_at=now, priority=priority, max_attempts=max_attempts,
    )  # fmt: skip


async def test_a_batch_of_finishes_is_one_call_and_a_stale_token_fails_only_its_job(
    redis_url: str,
) -> None:
    """Finishes made together go as one script call; the call checks each change on its
    own: the one whose lease moved to another store fails alone, the others land with
    their events (seen by this instance's listeners and, through the stream, another's)."""
    from datetime import datetime, timedelta, timezone

    from asyncjobs.errors import LeaseLost
    from asyncjobs.stores import Outcome

    prefix = f"aj_batch_{uuid.uuid4().hex[:12]}"
    mine, other = RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    seen_here: list[JobEvent] = []
    seen_there: list[JobEvent] = []
    try:
        await mine.open()
        await other.open()
        mine.add_listener(seen_here.append)
        other.add_listener(seen_there.append)
        jobs = [_queued(max_attempts=3) for _ in range(3)]
        for job in jobs:
            await mine.add(job)
        claimed = await mine.claim("w1", types=["t"], limit=3, lease=30, now=t0)
        assert [j.id for j in claimed] == [j.id for j in jobs]
        tokens = {j.id: j.lease.token for j in claimed if j.lease is not None}
        stale = jobs[1].id
        for job in (jobs[0], jobs[2]):  # renewed; the middle one's lease runs out
            await mine.renew(job.id, tokens[job.id], lease=30, now=t0 + timedelta(seconds=20))
        later = t0 + timedelta(seconds=31)
        assert [j.id for j in await other.requeue_expired(now=later)] == [stale]
        (reclaimed,) = await other.claim("w2", types=["t"], limit=3, lease=30, now=later)
        assert reclaimed.id == stale and reclaimed.lease is not None
        seen_here.clear()
        with script_calls(mine) as calls:
            results = await asyncio.gather(
                *(
                    mine.finish(job.id, tokens[job.id], Outcome(JobStatus.COMPLETED), now=later)
                    for job in jobs
                ),
                return_exceptions=True,
            )
        assert (calls[0][0], calls[0][1][3]) == ("commit", "3"), calls  # one call for three
        assert isinstance(results[1], LeaseLost)
        finished = [results[0], results[2]]
        assert [r.status for r in finished] == [JobStatus.COMPLETED] * 2  # type: ignore[union-attr]
        held = await mine.get(stale)
        assert held.status is JobStatus.RUNNING
        assert held.lease is not None and held.lease.token == reclaimed.lease.token
        done = {jobs[0].id, jobs[2].id}
        assert {e.job.id for e in seen_here if e.type is EventType.COMPLETED} == done
        with anyio.fail_after(10):
            while {e.job.id for e in seen_there if e.type is EventType.COMPLETED} != done:
                await anyio.sleep(0.01)
    finally:
        await mine.close()
        await other.close()
        await destroy_redis_prefix(redis_url, prefix)


async def test_claimed_jobs_are_what_a_read_makes_and_only_an_end_wakes(redis_url: str) -> None:
    """A claim builds its jobs from the reply (not through ``materialize``) and announces
    them without a wake-up (a start frees nothing): the jobs are those a read of the
    stored job makes, and the events a finish announces are the general ones."""
    from datetime import datetime, timedelta, timezone

    from asyncjobs.job import JobError
    from asyncjobs.stores import Outcome

    prefix = f"aj_claimread_{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    seen: list[JobEvent] = []
    try:
        await store.open()
        store.add_listener(seen.append)
        plain = _queued()
        rich = attrs.evolve(
            _queued(max_attempts=3),
            params={"n": [1, 2.5, None, "é"], "s": 'a"b\\c'},
            tags=("x", "y"),
            trace={"traceparent": "00-ab-cd-01"},
            owner="tenant",
            idempotency_key="k1",
            timeout=30,
            retention=60.0,
            run_at=t0 + timedelta(microseconds=1),
        )
        for job in (plain, rich):
            await store.add(job)
        seen.clear()
        generation = store.work_generation()
        claimed = await store.claim("w1", types=["t"], limit=5, lease=30, now=t0)
        assert store.work_generation() == generation
        assert claimed == [await store.get(job.id) for job in (plain, rich)]
        assert [(e.type, e.job) for e in seen] == [(EventType.STARTED, j) for j in claimed]
        seen.clear()
        outcomes = [
            Outcome(JobStatus.COMPLETED, result={"ok": [1, "é"]}),
            Outcome(JobStatus.SCHEDULED, error=JobError("E", "m", "tb"), run_at=t0),
        ]
        done = []
        for job, outcome in zip(claimed, outcomes, strict=True):
            assert job.lease is not None
            done.append(await store.finish(job.id, job.lease.token, outcome, now=t0))
        assert store.work_generation() > generation
        assert done == [await store.get(job.id) for job in claimed]
        assert [(e.type, e.job) for e in seen] == [
            (EventType.COMPLETED, done[0]),
            (EventType.RETRYING, done[1]),
        ]
    finally:
        await store.close()
        await destroy_redis_prefix(redis_url, prefix)


async def _finish_with_a_lost_reply(redis_url: str, held: bool, landed: bool) -> tuple[Any, ...]:
    from datetime import datetime, timezone

    from asyncjobs.stores import Outcome

    prefix = f"aj_lostreply_{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    seen: list[JobEvent] = []
    try:
        await store.open()
        await store.add(_queued())
        (job,) = await store.claim("w1", types=["t"], limit=1, lease=30, now=t0)
        assert job.lease is not None
        store.add_listener(seen.append)
        if not held:
            store._held.clear()
        send, sent = store._finishes._send, []

        async def lossy(changes: list[Any]) -> list[Any]:
            sent.append(changes)
            if len(sent) > 1:
                return await send(changes)
            if landed:  # written, then the reply went missing
                await send(changes)
            return [[0]]

        store._finishes._send = lossy  # type: ignore[method-assign]
        done = await store.finish(job.id, job.lease.token, Outcome(JobStatus.COMPLETED), now=t0)
        stored = await store.get(job.id)
        return (
            attrs.evolve(done, id=""),
            attrs.evolve(stored, id=""),
            [(e.type, e.job == done) for e in seen],
            job.id in store._held,
            len(sent),
        )
    finally:
        await store.close()
        await destroy_redis_prefix(redis_url, prefix)


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "missed"])
async def test_a_finish_with_a_lost_reply_ends_the_same_held_or_not(
    redis_url: str, landed: bool
) -> None:
    """A worker's finish of a job it holds takes a path of its own (_change's first round
    inline): when the commit's reply says it missed (it landed, or it did not), it ends
    as the general path ends it, with the same job, stored record and events."""
    fast = await _finish_with_a_lost_reply(redis_url, held=True, landed=landed)
    general = await _finish_with_a_lost_reply(redis_url, held=False, landed=landed)
    assert fast == general
    assert fast[0] == fast[1] and fast[0].status is JobStatus.COMPLETED
    assert fast[2] == ([] if landed else [(EventType.COMPLETED, True)])
    assert fast[3:] == (False, 1 if landed else 2)  # one commit more only if it missed


async def test_a_big_claim_across_types_keeps_the_order_and_limits_and_no_job_twice(
    redis_url: str,
) -> None:
    """Two stores claim 25 jobs each at once from three types: together they take the
    best jobs by priority then age, never more running of a limited type than its limit,
    and no job twice; each claim lists its jobs in that order."""
    import random
    from datetime import datetime, timezone

    prefix = f"aj_bigclaim_{uuid.uuid4().hex[:12]}"
    one, two = RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rng = random.Random(12)
    try:
        await one.open()
        await two.open()
        jobs = [_queued(rng.choice("abc"), priority=rng.choice([0, 1, 5])) for _ in range(90)]
        await one.add_many(jobs)
        (running,) = await two.claim("w0", types=["a"], limit=1, lease=30, now=now)
        limits = {"a": 6}  # one of them is running already: room for 5
        first, second = await asyncio.gather(
            one.claim("w1", types=["a", "b", "c"], limit=25, lease=30, now=now, type_limits=limits),
            two.claim("w2", types=["c", "b", "a"], limit=25, lease=30, now=now, type_limits=limits),
        )

        def rank(job: Job) -> tuple[int, str]:
            return (-job.priority, job.id)

        expected: list[str] = []
        room = 5
        for job in sorted((j for j in jobs if j.id != running.id), key=rank):
            if job.type == "a":
                if room == 0:
                    continue
                room -= 1
            expected.append(job.id)
        for claimed in (first, second):
            assert [j.id for j in claimed] == [j.id for j in sorted(claimed, key=rank)]
        ids = [j.id for j in first] + [j.id for j in second]
        assert len(set(ids)) == len(ids) == 50
        if first[0].id != expected[0]:  # the second call's script ran first
            first, second = second, first
        assert [j.id for j in first] == expected[:25]
        assert [j.id for j in second] == expected[25:50]
        assert sum(j.type == "a" for j in first + second) == 5
        stats = await one.stats()
        assert stats.by_type["a"][JobStatus.RUNNING] == 6
        assert stats.counts[JobStatus.RUNNING] == 51
    finally:
        await one.close()
        await two.close()
        await destroy_redis_prefix(redis_url, prefix)


async def test_the_outbox_is_not_asked_again_until_a_delivery_can_be_due(
    redis_url: str,
) -> None:
    """A claim of deliveries that found none due is trusted (no round trip) until the
    next one is due or a job's end wrote one, here or in another process."""
    from datetime import datetime, timedelta, timezone

    from asyncjobs.stores import Outcome
    from asyncjobs.webhooks.model import Webhook

    prefix = f"aj_outbox_{uuid.uuid4().hex[:12]}"
    sender, worker = RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    asked: list[str] = []
    try:
        await sender.open()
        await worker.open()
        inner = sender._webhooks._run

        async def spy(name: str, *args: object) -> object:
            asked.append(name)
            return await inner(name, *args)

        sender._webhooks._run = spy  # type: ignore[method-assign]
        await worker.add_webhook(Webhook(url="https://example.com/h", secret="s"), now=now)
        assert await sender.claim_deliveries(now=now, limit=10, lease=30) == []
        assert await sender.claim_deliveries(now=now, limit=10, lease=30) == []
        assert asked == ["claim"]  # the second answer came without asking
        job = _queued()
        await worker.add(job)
        (running,) = await worker.claim("w", types=["t"], limit=1, lease=30, now=now)
        assert running.lease is not None
        await worker.finish(job.id, running.lease.token, Outcome(JobStatus.COMPLETED), now=now)
        with anyio.fail_after(10):  # the end's event says a delivery was written
            while not (claimed := await sender.claim_deliveries(now=now, limit=10, lease=30)):
                await anyio.sleep(0.01)
        assert [d.job.id for d, _ in claimed] == [job.id]
        later = now + timedelta(seconds=1)  # no longer trusted: asked again
        before = len(asked)
        assert await sender.claim_deliveries(now=later, limit=10, lease=30) == []
        assert len(asked) == before + 1
    finally:
        await sender.close()
        await worker.close()
        await destroy_redis_prefix(redis_url, prefix)


async def test_own_writes_do_not_wake_the_tail_and_others_still_arrive(redis_url: str) -> None:
    """A store that only writes never reads its own events back (its tail waits on its
    bell), and does not resync when the stream is trimmed past them; an event of
    another store still reaches it, in order, without a resync."""
    prefix = f"aj_bell_{uuid.uuid4().hex[:12]}"
    writer = RedisStore(redis_url, prefix=prefix, stream_maxlen=10)
    other = RedisStore(redis_url, prefix=prefix, stream_maxlen=10)
    resyncs: list[int] = []
    heard: list[JobEvent] = []
    try:
        await writer.open()
        await other.open()
        writer.add_resync_listener(lambda: resyncs.append(1))
        writer.add_listener(heard.append)
        assert writer._tail is not None
        reads = 0
        inner = writer._tail._take

        def counting(entry_id: bytes, flat: list[bytes]) -> None:
            nonlocal reads
            reads += 1
            inner(entry_id, flat)

        writer._tail._take = counting  # type: ignore[method-assign]
        tails = "{" + prefix + "}:tails"
        with anyio.fail_after(10):  # the tail is waiting on its bell
            while not await writer._redis().sismember(tails, writer._instance):
                await anyio.sleep(0.01)
        for _ in range(5):
            await writer.add_many([_queued() for _ in range(20)])  # 100 entries, trimmed
        await anyio.sleep(0.2)
        assert reads == 0
        heard.clear()
        job = _queued("from-other")
        await other.add(job)
        with anyio.fail_after(10):
            while not heard:
                await anyio.sleep(0.01)
        assert [(e.type, e.job.id) for e in heard] == [(EventType.CREATED, job.id)]
        assert reads == 1
        assert resyncs == []
    finally:
        await writer.close()
        await other.close()
        await destroy_redis_prefix(redis_url, prefix)


async def test_a_copy_ahead_of_an_unreported_own_write_is_no_gap(redis_url: str) -> None:
    """Another store's event reaches the bell before this store has taken in the reply
    of its own write just before it: the tail reads the stream for the entries between,
    rather than taking the difference for a gap (a resync)."""
    prefix = f"aj_gap_{uuid.uuid4().hex[:12]}"
    writer, other = RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)
    resyncs: list[int] = []
    heard: list[JobEvent] = []
    try:
        await writer.open()
        await other.open()
        writer.add_resync_listener(lambda: resyncs.append(1))
        writer.add_listener(heard.append)
        tails = "{" + prefix + "}:tails"
        with anyio.fail_after(10):
            while not await writer._redis().sismember(tails, writer._instance):
                await anyio.sleep(0.01)
        writer._wrote = lambda written: None  # type: ignore[method-assign]  # reply not in yet
        mine, theirs = _queued(), _queued()
        await writer.add(mine)
        heard.clear()
        await other.add(theirs)
        with anyio.fail_after(10):
            while not heard:
                await anyio.sleep(0.01)
        assert [(e.type, e.job.id) for e in heard] == [(EventType.CREATED, theirs.id)]
        assert resyncs == []
    finally:
        await writer.close()
        await other.close()
        await destroy_redis_prefix(redis_url, prefix)


def test_own_writes_reported_out_of_order_still_move_the_tail_past_them() -> None:
    """Script replies come back on several pooled connections: a later write can be
    reported before an earlier one. The tail waits for the gap to fill, then moves past
    both (it never reads its own entries back, so a lost report would leave it behind
    until the stream is trimmed past it: a resync)."""
    from asyncjobs.stores.redis.events import StreamTail

    async def poke(key: str) -> None:
        return None

    tail = StreamTail(lambda: None, poke, "{p}:", "me", lambda e, o: None, lambda: None)
    assert tail.position == (0, b"0-0")
    tail.wrote(6, 9, b"9-0")  # the later write first
    assert tail.position == (0, b"0-0")
    tail.wrote(1, 5, b"5-0")
    assert tail.position == (9, b"9-0")
    tail.wrote(3, 4, b"4-0")  # behind the position: nothing to do
    assert tail.position == (9, b"9-0")
