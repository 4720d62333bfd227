"""RedisStore: jobs in Redis, shared by many processes on many machines.

* Every change is one Lua script (:mod:`.scripts`): the job hash, its indexes, the
  counters behind ``stats`` and the event on the queue's stream change together.
* ``claim`` runs entirely in Lua (priority then FIFO across types, per-type limits read
  from the counters, a batch of up to ``limit`` jobs per call). Other single-job changes
  are computed in Python by the shared steps of :mod:`..steps` and written by the commit
  script only if the job still has the version they started from; for a job this
  instance claimed, the step starts from the snapshot it holds, so progress and finish
  are one round trip.
* Events go to this process's listeners directly and to every other process through
  the stream (:mod:`.events`); idle workers wake on the blocking stream read, never by
  polling.
* What is done to many jobs at once (sweeps, purge, batch submit, retry in place,
  listing) lives in :mod:`.bulk`; the methods here call it.
* All keys of a queue share the hash tag ``{prefix}``, so one queue lives in one Redis
  Cluster slot, and queues with different prefixes share a database.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from time import time_ns
from typing import Any, final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import attrs

from ...codec import _iso as _time_text
from ...codec import job_from_record, loads, parse_time, record_text
from ...errors import ConfigurationError, IllegalTransition, JobNotFound, LeaseLost, QueueFull
from ...job import TERMINAL, EventType, Job, JobEvent, JobStatus, Lease, make_event
from ...jsonrules import check_storable
from ...webhooks.model import Delivery, Webhook, message_id
from ..handoff import give_back
from ..listeners import Listeners
from ..protocol import EventListener, Outcome, Page, Stats, WorkerInfo
from ..steps import (
    cancel_step,
    claim_step,
    expire_step,
    finish_step,
    new_token,
    progress_step,
    promote_step,
    retry_step,
)
from . import bulk
from .batch import CommitBatcher
from .bulk import idem_field, score
from .connection import make_client, make_tail_client
from .events import StreamTail, materialize
from .handoff import Parking, from_epoch_us
from .line import ScriptLine, open_line
from .scripts import ADD, ADD_MANY, CLAIM, COMMIT, RENEW, UNPARK
from .webhooks import WebhookOutbox
from .workers import WorkerRegistry

__all__ = ["RedisStore"]

logger = logging.getLogger("asyncjobs.store.redis")

_HELD_MAX = 10_000
_FIELDS = ("d", "c", "w", "k", "e")
# Enum members as module constants: reading one off its class costs ~100 ns on 3.11.
_QUEUED, _SCHEDULED, _RUNNING = JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING
_STARTED = EventType.STARTED
# An enum's .value is a property (about 100 ns on Python 3.11); a dict is a third of that.
_STATUS_TEXT = {status: status.value for status in JobStatus}
_EVENT_TEXT = {type_: type_.value for type_ in EventType}
_ENDS = frozenset(status.value for status in TERMINAL)
#: Events after which a job may have become claimable (or a per-type slot freed up).
WAKE = frozenset(
    {
        EventType.CREATED,
        EventType.QUEUED,
        EventType.RETRYING,
        EventType.COMPLETED,
        EventType.FAILED,
        EventType.CANCELLED,
    }
)


@final
class RedisStore:
    """A store in Redis: shared by every process attached to the same prefix.

    Args:
        url: ``redis://[:password@]host:6379/0`` or ``rediss://...`` (TLS).
        prefix: Names this queue's keys (``{prefix}:...``); queues with different
            prefixes share a database without seeing each other.
        stream_maxlen: About how many events the stream keeps for processes that
            reconnect (older ones are trimmed; a process that missed them resyncs).
        max_connections: The connection pool's size (one more is used for events).
        reconnect_timeout: Seconds a call keeps retrying while Redis cannot be reached
            (a restart, a failover) before it raises the connection error.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "asyncjobs",
        stream_maxlen: int = 10_000,
        max_connections: int = 50,
        reconnect_timeout: float = 30.0,
    ) -> None:
        if not prefix or any(ch in prefix for ch in "{}"):
            raise ConfigurationError(f"invalid Redis key prefix {prefix!r}: no braces, not empty")
        self.redis_url = url
        self.prefix = prefix
        self.url = _redact(url) + ("" if prefix == "asyncjobs" else f"?prefix={prefix}")
        self._p = "{" + prefix + "}:"
        self._maxlen = str(stream_maxlen)
        self._max_connections = max_connections
        self._reconnect_timeout = reconnect_timeout
        self._instance = secrets.token_hex(8)
        self._client: Any = None
        self._line: ScriptLine | None = None
        self._tail: StreamTail | None = None
        self._sha: dict[str, str] = {}
        self._listeners = Listeners()
        self._resync_items: builtins.list[Callable[[], None]] = []
        self._generation = 0
        self._wake: anyio.Event | None = None
        self._held: OrderedDict[str, Job] = OrderedDict()
        self._workers = WorkerRegistry(self._redis, self._p)
        self._webhooks = WebhookOutbox(self._redis, self._p)
        self._finishes = CommitBatcher(self._commit)
        self._parking = Parking(self._instance)
        self._giving: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisStore:
        """Build a store from ``redis://host/db[?prefix=name]`` (or ``rediss://``)."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        rest = []
        for name, value in query:
            if name == "prefix":
                kwargs.setdefault("prefix", value)
            else:
                rest.append((name, value))
        return cls(urlunsplit(parts._replace(query=urlencode(rest))), **kwargs)

    @property
    def tail_client_name(self) -> str:
        """The name (``CLIENT LIST``) of the connection that tails the event stream."""
        return f"asyncjobs-tail-{self._instance}"

    @property
    def line_client_name(self) -> str:
        """The name (``CLIENT LIST``) of the connection that carries the script calls."""
        return f"asyncjobs-line-{self._instance}"

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        client = make_client(
            self.redis_url,
            reconnect_timeout=self._reconnect_timeout,
            max_connections=self._max_connections,
        )
        try:
            for name, source in _SOURCES.items():
                self._sha[name] = await client.script_load(source)
            tail = StreamTail(
                lambda: make_tail_client(self.redis_url, name=self.tail_client_name),
                lambda key: client.xadd(key, {"stop": "1"}),
                self._p,
                self._instance,
                self._on_remote,
                self._on_resync,
                handed=self._on_handed,
            )
            await tail.start()
        except BaseException:
            await client.aclose()
            raise
        self._client, self._tail = client, tail
        self._line = open_line(client, name=self.line_client_name)

    async def close(self) -> None:
        if self._client is not None:
            await self._leave_parking()
        client, self._client = self._client, None
        tail, self._tail = self._tail, None
        line, self._line = self._line, None
        self._held.clear()
        await self._finishes.stop()
        if line is not None:
            await line.close()
        if tail is not None:
            await tail.stop()
        if client is not None:
            await client.aclose()

    # -- plumbing ----------------------------------------------------------------

    def _redis(self) -> Any:
        if self._client is None:
            raise ConfigurationError("the Redis store is closed; await store.open() first")
        return self._client

    async def _eval(self, name: str, key: str, *args: Any) -> Any:
        from redis.exceptions import NoScriptError

        client = self._redis()
        line = self._line
        call = client.execute_command if line is None else line.call
        try:
            return await call("EVALSHA", self._sha[name], 1, key, *args)
        except NoScriptError:  # a restarted server forgot it: nothing ran, load and redo
            self._sha[name] = await client.script_load(_SOURCES[name])
            return await call("EVALSHA", self._sha[name], 1, key, *args)

    async def _commit(self, changes: Sequence[Sequence[str]]) -> builtins.list[Any]:
        """Write changes (each :meth:`_commit_args`) in one script call: each lands or
        not on its own; one reply per change, in order."""
        if not changes:
            return []
        args = [self._p, self._instance, self._maxlen, str(len(changes))]
        for change in changes:
            args += change
        replies: builtins.list[Any] = await self._eval("commit", self._p + "seq", *args)
        self._wrote(replies.pop())
        if any(len(reply) > 2 for reply in replies):
            self._webhooks.written()
        return replies

    def _wrote(self, written: Any) -> None:
        """What a script wrote to the stream (see ``ring`` in :mod:`.scripts`): this
        instance's tail moves past it without reading it back."""
        if written and self._tail is not None:
            first, last, entry_id = written
            self._tail.wrote(int(first), int(last), entry_id)

    def _key(self, job_id: str) -> str:
        return self._p + "job:" + job_id

    def _commit_args(
        self,
        expected: int,
        nxt: Job,
        type_: EventType,
        now: datetime,
        *,
        delete: bool = False,
        max_queued: int | None = None,
        lease_was: str = "",
    ) -> list[str]:
        """One change for :data:`.scripts.COMMIT` (see there)."""
        finished = nxt.finished_at
        fin_score = expiry = ""
        if finished is not None:
            fin_epoch = finished.timestamp()
            fin_score = repr(fin_epoch)
            if nxt.retention is not None:
                expiry = repr(fin_epoch + nxt.retention)
        status = _STATUS_TEXT[nxt.status]
        # A job's end goes to the webhook outbox with its time (the record's own text).
        msg = at = at_score = ""
        if not delete and status in _ENDS:
            at_score = fin_score if finished is not None else score(nxt.run_at)
            msg, at = message_id(nxt, ""), _time_text(finished or nxt.run_at)
        return [
            nxt.id,
            str(expected),
            "" if delete else record_text(nxt),
            status,
            nxt.type,
            str(nxt.priority),
            score(nxt.run_at),
            fin_score,
            expiry,
            _EVENT_TEXT[type_],
            _time_text(now),
            idem_field(nxt) if (expected == 0 or delete) else "",
            "" if max_queued is None else str(max_queued),
            lease_was,
            msg,
            at,
            at_score,
        ]

    def _hold(self, jobs: Sequence[Job]) -> None:
        held = self._held
        for job in jobs:
            held[job.id] = job
            held.move_to_end(job.id)
        while len(held) > _HELD_MAX:
            held.popitem(last=False)

    def _emit(self, events: Collection[JobEvent]) -> None:
        self._listeners.emit(events)
        if any(e.type in WAKE for e in events):
            self._notify_work()

    def _on_remote(self, event: JobEvent, outbox: bool) -> None:
        if outbox:
            self._webhooks.written()
        if self._parking.keeping:
            self._kept_changed(event.job)
        if self._listeners:
            self._listeners.emit((event,))
        if event.type in WAKE:
            self._notify_work()

    def _on_resync(self) -> None:
        self._notify_work()  # a missed wake-up is as good as lost: claim again
        self._webhooks.written()
        for callback in builtins.list(self._resync_items):
            try:
                callback()
            except Exception:
                logger.exception("resync listener %r failed", callback)

    def _notify_work(self) -> None:
        self._generation += 1
        wake, self._wake = self._wake, None  # the next waiter makes a new one
        if wake is not None:
            wake.set()

    async def _read(self, job_ids: Sequence[str]) -> builtins.list[Job | None]:
        if not job_ids:
            return []
        pipe = self._redis().pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self._key(job_id), *_FIELDS)
        rows = await pipe.execute()
        return [None if row[0] is None else materialize(*row) for row in rows]

    # -- Store protocol ----------------------------------------------------------

    async def add(self, job: Job, *, max_queued: int | None = None) -> tuple[Job, bool]:
        check_storable(job)  # the rule every store applies (see jsonrules.json_problems)
        status = job.status
        doc: str | None = None
        if status is _QUEUED or status is _SCHEDULED:
            doc = record_text(job)
            # The hand-off's clock (epoch µs) and token (see .handoff).
            handing = (str(time_ns() // 1000), new_token()) if status is _QUEUED else ()
            reply = await self._eval(
                "add",
                self._p + "seq",
                self._p,
                self._instance,
                self._maxlen,
                job.id,
                doc,
                status.value,
                job.type,
                str(job.priority),
                score(job.run_at),
                idem_field(job),
                "" if max_queued is None else str(max_queued),
                _time_text(job.created_at),
                *handing,
            )
            if reply[0] == 1:
                if len(reply) > 3:  # two entries: the job was handed off
                    self._wrote((reply[1], reply[3], reply[4]))
                    return self._handed_off(job, reply, *handing)
                self._wrote((reply[1], reply[1], reply[2]))  # the one entry it wrote
        else:  # a job made elsewhere (an import, a test): the general path
            args = self._commit_args(
                0, job, EventType.CREATED, job.created_at, max_queued=max_queued
            )
            (reply,) = await self._commit([args])
        code = reply[0]
        if code == 1:
            self._emit([JobEvent(EventType.CREATED, int(reply[1]), job.created_at, job)])
            return job, True
        if code == 2:
            return materialize(*reply[1:6]), False
        if code == 3:
            assert max_queued is not None
            raise QueueFull(max_queued)
        stored = await self.get(job.id)
        if stored == job:  # our own first attempt landed before a dropped reply
            return job, True
        if doc is not None and await self._claimed_as_sent(job.id, doc):
            return job, True
        raise ValueError(f"a job with id {job.id} exists already")

    async def get(self, job_id: str) -> Job:
        (job,) = await self._read([job_id])
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def stats(self) -> Stats:
        raw = await self._redis().hgetall(self._p + "counts")
        counts = {s: 0 for s in JobStatus}
        by_type: dict[str, dict[JobStatus, int]] = {}
        for field, value in raw.items():
            n = int(value)
            if n <= 0:
                continue
            status, _, type_ = field.decode().partition("|")
            counts[JobStatus(status)] += n
            by_type.setdefault(type_, {s: 0 for s in JobStatus})[JobStatus(status)] += n
        return Stats(counts, by_type)

    async def claim(
        self,
        worker_id: str,
        *,
        types: Collection[str],
        limit: int,
        lease: float,
        now: datetime,
        type_limits: Mapping[str, int] | None = None,
    ) -> builtins.list[Job]:
        wanted = sorted(set(types))
        if not wanted or limit <= 0:
            return []
        if handed := self._parking.take(worker_id):
            # Stored as claimed by this worker already: no round trip. The held snapshot
            # is the newest (a cancel request through this instance updates it).
            return [self._held.get(job.id, job) for job in handed]
        limits = type_limits or {}
        pairs: builtins.list[str] = []
        for type_ in wanted:
            pairs += [type_, str(limits.get(type_, -1))]
        expires = now + timedelta(seconds=lease)
        tokens = [new_token() for _ in range(limit)]
        flat = await self._eval(
            "claim",
            self._p + "seq",
            self._p,
            worker_id,
            _time_text(now),
            _time_text(expires),
            score(expires),
            str(limit),
            self._instance,
            self._maxlen,
            str(len(wanted)),
            *pairs,
            *tokens,
            *self._parking.claim_args(worker_id, now, lease),
        )
        self._wrote(flat.pop())
        self._parking.claimed(worker_id, limit, len(flat) // 4)
        claimed: builtins.list[Job] = []
        events: builtins.list[JobEvent] = []
        for i in range(0, len(flat), 4):
            # materialize(doc, None, None, None, None): the claim's lease is made here.
            queued = job_from_record(loads(flat[i + 1]))
            job = claim_step(queued, worker_id, flat[i + 2].decode(), lease, now)
            claimed.append(job)
            events.append(make_event(_STARTED, int(flat[i + 3]), now, job))
        if events:
            self._listeners.emit(events)  # _emit() without its wake: a start frees nothing
            self._hold(claimed)
        return claimed

    async def renew(self, job_id: str, token: str, *, lease: float, now: datetime) -> Job:
        expires = now + timedelta(seconds=lease)
        reply = await self._eval(
            "renew",
            self._key(job_id),
            self._p,
            job_id,
            token,
            _time_text(expires),
            score(expires),
        )
        if reply[0] == -1:
            self._held.pop(job_id, None)
            raise JobNotFound(job_id)
        if reply[0] == 0:
            self._held.pop(job_id, None)
            raise LeaseLost(job_id)
        job = materialize(*reply[1:6])
        if job_id in self._held:
            self._held[job_id] = job
        return job

    async def _change(
        self,
        job_id: str,
        step: Callable[[Job], tuple[Job, EventType] | None],
        now: datetime,
        token: str | None = None,
        written: Job | None = None,
    ) -> Job:
        """Apply ``step`` to one job (None: nothing changes), write and announce it.

        Optimistic: the commit lands only if the job still has the version the step
        started from. The step starts from the held snapshot when there is one, unless
        ``written`` says a write of ours (that one) seemed to miss: then from a read.
        """
        held = self._held
        job: Job | None = held.get(job_id) if written is None else None
        while True:
            cached = job is not None
            if job is None:
                try:
                    job = await self.get(job_id)
                except JobNotFound:
                    held.pop(job_id, None)
                    raise
                if written is not None and job == written:
                    # Our commit landed; a dropped reply made the retry find it done.
                    held.pop(job_id, None)
                    return job
            try:
                result = step(job)
            except (LeaseLost, IllegalTransition):
                held.pop(job_id, None)
                if cached:  # the held snapshot may be stale: judge by the stored job
                    job = None
                    continue
                raise
            if result is None:
                return job
            nxt, type_ = result
            args = self._commit_args(job.version, nxt, type_, now)
            if token is not None and nxt.status is not _RUNNING:
                # A worker's finish: sent with the other finishes of the moment.
                reply = await self._finishes.call(args)
            else:
                (reply,) = await self._commit([args])
            if reply[0] == 1:
                if nxt.status is _RUNNING and (token is not None or job_id in held):
                    self._hold([nxt])
                else:
                    held.pop(job_id, None)
                self._announce(type_, int(reply[1]), now, nxt)
                return nxt
            if reply[0] == -1:
                held.pop(job_id, None)
                raise JobNotFound(job_id)
            job, written = None, nxt

    def _announce(self, type_: EventType, seq: int, now: datetime, job: Job) -> None:
        """``_emit([JobEvent(type_, seq, now, job)])`` without the list."""
        self._listeners.emit_one(make_event(type_, seq, now, job))
        if type_ in WAKE:
            self._notify_work()

    async def set_progress(
        self, job_id: str, token: str, progress: float, message: str | None, *, now: datetime
    ) -> Job:
        def step(job: Job) -> tuple[Job, EventType]:
            return progress_step(job, token, progress, message), EventType.PROGRESS

        return await self._change(job_id, step, now, token)

    async def finish(self, job_id: str, token: str, outcome: Outcome, *, now: datetime) -> Job:
        job = self._held.get(job_id)
        written: Job | None = None
        if job is not None:
            # _change's first round inline (a worker ending the job it holds: once per
            # job): no step closure, a coroutine less; anything but a landed commit goes
            # on in _change.
            try:
                nxt, type_ = finish_step(job, token, outcome, now)
            except (LeaseLost, IllegalTransition):
                pass  # the held snapshot may be stale: _change judges by the stored job
            else:
                reply = await self._finishes.call(self._commit_args(job.version, nxt, type_, now))
                if reply[0] == 1:
                    self._held.pop(job_id, None)
                    event = make_event(type_, int(reply[1]), now, nxt)  # _announce(), inline
                    self._listeners.emit_one(event)
                    if type_ in WAKE:
                        self._notify_work()
                    return nxt
                if reply[0] == -1:
                    self._held.pop(job_id, None)
                    raise JobNotFound(job_id)
                written = nxt
        return await self._change(
            job_id, lambda job: finish_step(job, token, outcome, now), now, token, written
        )

    async def request_cancel(self, job_id: str, *, now: datetime) -> Job:
        return await self._change(job_id, lambda j: cancel_step(j, now), now)

    async def delete(self, job_id: str, *, now: datetime) -> Job:
        while True:
            job = await self.get(job_id)
            if not job.is_terminal:
                raise IllegalTransition(job.id, job.status.value, "deleted")
            args = self._commit_args(job.version, job, EventType.DELETED, now, delete=True)
            (reply,) = await self._commit([args])
            if reply[0] == 1:
                self._emit([JobEvent(EventType.DELETED, int(reply[1]), now, job)])
                return job

    async def requeue_expired(self, *, now: datetime) -> builtins.list[Job]:
        def step(job: Job) -> tuple[Job, EventType] | None:
            if job.status is not _RUNNING or job.lease is None:
                return None
            if job.lease.expires_at > now:
                return None
            return expire_step(job, now)

        return await bulk.sweep(self, "leases", now, step, judge_lease=True)

    async def promote_scheduled(self, *, now: datetime) -> builtins.list[Job]:
        def step(job: Job) -> tuple[Job, EventType] | None:
            if job.status is not JobStatus.SCHEDULED or job.run_at > now:
                return None
            return promote_step(job), EventType.QUEUED

        return await bulk.sweep(self, "scheduled", now, step)

    async def purge(
        self,
        *,
        now: datetime,
        statuses: Collection[JobStatus] = TERMINAL,
        types: Collection[str] | None = None,
        finished_before: datetime | None = None,
        expired: bool = False,
        limit: int | None = None,
    ) -> int:
        return await bulk.purge(
            self,
            now=now,
            statuses=statuses,
            types=types,
            finished_before=finished_before,
            expired=expired,
            limit=limit,
        )

    # -- worker registry -----------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        self._parking.enlist(info.id)
        await self._workers.register(info)

    async def list_workers(self, *, now: datetime) -> builtins.list[WorkerInfo]:
        return await self._workers.list(now=now)

    async def remove_worker(self, worker_id: str) -> None:
        await self._leave_parking(worker_id)
        await self._workers.remove(worker_id)

    # -- the hand-off to parked workers (see .handoff) -------------------------------

    def _handed_off(self, job: Job, reply: Any, micros: str, token: str) -> tuple[Job, bool]:
        """ADD stored ``job`` claimed by a parked worker: both events, as other
        processes decode them (see ``materialize``)."""
        now = from_epoch_us(int(micros))
        member = reply[5].decode()
        instance, _, worker = member.partition(" ")
        started = claim_step(job, worker, token, 0.0, now)
        lease = Lease(worker, token, parse_time(reply[6].decode()))
        started = attrs.evolve(started, lease=lease)
        # Nothing here may claim it: no wake-up (the worker's store wakes its worker).
        self._listeners.emit(
            [
                JobEvent(EventType.CREATED, int(reply[1]), job.created_at, job),
                JobEvent(EventType.STARTED, int(reply[3]), now, started),
            ]
        )
        if instance == self._instance:  # our own tail skips these entries
            self._arrived(worker, started)
        return job, True

    def _on_handed(self, event: JobEvent, member: bytes) -> None:
        """An event of a job another instance handed to a parked worker (from the tail)."""
        if self._listeners:
            self._listeners.emit((event,))
        if event.type is not EventType.STARTED:
            return  # its job_created: not claimable, so no wake-up
        instance, _, worker = member.decode().partition(" ")
        if instance == self._instance:
            self._arrived(worker, event.job)

    def _arrived(self, worker: str, job: Job) -> None:
        """A job was handed to ``worker`` of this store: kept for its next claim, or
        given back if it is gone."""
        if self._parking.arrived(worker, job):
            self._hold([job])
            self._notify_work()
            return
        task = asyncio.get_running_loop().create_task(give_back(self, [job]))
        self._giving.add(task)
        task.add_done_callback(self._giving.discard)

    def _kept_changed(self, job: Job) -> None:
        """A job kept for a worker changed elsewhere: the worker takes the newest."""
        kept = self._parking.changed(job)
        if kept is not None and kept.id in self._held:
            self._held[kept.id] = kept

    async def _claimed_as_sent(self, job_id: str, doc: str) -> bool:
        """Whether the stored job is the one we sent, claimed since (handed off by our
        own first attempt, whose reply was lost): the claim leaves its record as sent."""
        stored = await self._redis().hget(self._key(job_id), "d")
        return stored is not None and stored.decode() == doc

    async def _leave_parking(self, worker_id: str | None = None) -> None:
        """Take a worker (or every worker of this store) off the parked lists, and give
        back what was handed to it and not taken."""
        members, jobs = self._parking.forget(worker_id)
        if members:
            try:
                with anyio.fail_after(5):
                    await self._eval("unpark", self._p + "parking", self._p, *members)
            except Exception:  # the entries age out on their own within seconds
                logger.warning("could not take workers off the parked lists", exc_info=True)
        await give_back(self, jobs)
        if worker_id is None and self._giving:
            await asyncio.wait(builtins.list(self._giving), timeout=5.0)

    # -- operations: batch submit and retry in place -------------------------------

    async def add_many(
        self, jobs: Sequence[Job], *, max_queued: int | None = None
    ) -> builtins.list[tuple[Job, bool]]:
        return await bulk.add_many(self, jobs, max_queued=max_queued)

    async def retry(self, job_id: str, *, now: datetime) -> Job:
        return await self._change(
            job_id, lambda job: (retry_step(job, now), EventType.RETRYING), now
        )

    async def retry_many(
        self,
        *,
        now: datetime,
        statuses: Collection[JobStatus] = (JobStatus.FAILED,),
        types: Collection[str] | None = None,
        owner: str | None = None,
    ) -> builtins.list[Job]:
        """Each job is retried atomically on its own (a job that changed meanwhile is
        judged again); the whole call is not one transaction."""
        return await bulk.retry_many(self, now=now, statuses=statuses, types=types, owner=owner)

    # -- operations: the webhook outbox --------------------------------------------

    async def add_webhook(self, hook: Webhook, *, now: datetime) -> Webhook:
        return await self._webhooks.add(hook, now=now)

    async def list_webhooks(self) -> builtins.list[Webhook]:
        return await self._webhooks.list()

    async def delete_webhook(self, webhook_id: str) -> None:
        await self._webhooks.delete(webhook_id)

    async def claim_deliveries(
        self, *, now: datetime, limit: int, lease: float
    ) -> builtins.list[tuple[Delivery, Webhook]]:
        return await self._webhooks.claim(now=now, limit=limit, lease=lease)

    async def finish_delivery(
        self,
        delivery_id: str,
        *,
        now: datetime,
        ok: bool,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        await self._webhooks.finish(delivery_id, now=now, ok=ok, error=error, retry_at=retry_at)

    async def list_deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int = 100
    ) -> builtins.list[Delivery]:
        return await self._webhooks.deliveries(webhook_id, status=status, limit=limit)

    async def purge_deliveries(self, *, before: datetime, limit: int) -> int:
        return await self._webhooks.purge(before=before, limit=limit)

    # -- notifier ----------------------------------------------------------------

    def add_listener(self, listener: EventListener) -> Callable[[], None]:
        return self._listeners.add(listener)

    def add_resync_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever this store may have missed events."""
        self._resync_items.append(callback)

        def remove() -> None:
            if callback in self._resync_items:
                self._resync_items.remove(callback)

        return remove

    def work_generation(self) -> int:
        """Grows on every wake-up (a job added, promoted, requeued, or a running one ended)."""
        return self._generation

    async def wait_for_work(self, timeout: float, *, since: int | None = None) -> None:
        if since is not None and self._generation > since:
            return
        if self._wake is None:
            self._wake = anyio.Event()
        wake = self._wake
        with anyio.move_on_after(timeout):
            await wake.wait()

    # Defined last: inside the class body, ``list`` names this method from here on.
    async def list(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        types: Collection[str] | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        return await bulk.list_jobs(
            self, statuses=statuses, types=types, owner=owner, cursor=cursor, limit=limit
        )


_SOURCES = {
    "add": ADD,
    "claim": CLAIM,
    "commit": COMMIT,
    "renew": RENEW,
    "add_many": ADD_MANY,
    "unpark": UNPARK,
}


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
