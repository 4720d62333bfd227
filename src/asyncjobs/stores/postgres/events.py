"""Events of :class:`~asyncjobs.stores.postgres.PostgresStore` over NOTIFY.

A payload is ``{"src", "seq", "type", "at", "job"}``: the event record of
:func:`asyncjobs.codec.event_to_record` plus the id of the store instance that sent it
(an instance hands its own events to its listeners directly, and skips their echo).
The server splices ``seq`` in, since it is drawn from the sequence in the same
statement. PostgreSQL refuses payloads of 8000 bytes or more; a larger event is sent
``"partial"``: with the job stripped of params, result, error and message (or only its
id), and the receiver reads the job back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import Any, final

import attrs

from ...codec import dumps, format_time, job_from_record, job_to_record, parse_time
from ...job import EventType, Job, JobEvent
from ..listeners import WAKE
from ..tasks import BackgroundTasks, TaskHandle

__all__ = ["WAKE", "RemoteEvents", "encode_head", "encode_suffix", "make_prefix"]

logger = logging.getLogger("asyncjobs.store.postgres")

#: Below PostgreSQL's 8000-byte payload limit, with room for the seq.
_NOTIFY_LIMIT = 7900
#: Notifications waiting to be decoded; beyond this they are dropped and the store
#: resyncs once the backlog is worked off (memory stays bounded under a flood).
INBOX_MAX = 10_000


def make_prefix(instance: str) -> str:
    """The payload up to the seq, which the server appends."""
    return '{"src":' + json.dumps(instance) + ',"seq":'


def encode_head(type: EventType, at: datetime) -> str:
    """The payload between the seq and the job, for payloads built in SQL."""
    # What dumps() makes of {"type", "at"}: neither value ever needs escaping.
    return ',"type":"' + type.value + '","at":"' + format_time(at) + '"'


def encode_suffix(
    prefix: str, type: EventType, job: Job, at: datetime, record: str | None = None
) -> str:
    """The payload after the seq: the event record, or a partial one if it is too big.

    ``record`` is ``dumps(job_to_record(job))`` when the caller has it already (the row
    and the payload then share one encoding).
    """
    when = format_time(at)
    room = _NOTIFY_LIMIT - len(prefix.encode()) - 20
    if record is None:
        record = dumps(job_to_record(job))
    # Same text as dumps({"type", "at", "job"}), without encoding the job again.
    body = dumps({"type": type.value, "at": when})[:-1] + ',"job":' + record + "}"
    if len(body.encode()) > room:
        slim = attrs.evolve(job, params={}, result=None, error=None, message=None, tags=())
        body = dumps({"type": type.value, "at": when, "partial": True, "job": job_to_record(slim)})
        if len(body.encode()) > room:
            body = dumps({"type": type.value, "at": when, "partial": True, "id": job.id})
    return "," + body[1:]


@final
class RemoteEvents:
    """Turns notifications from other store instances into events, in arrival order.

    Args:
        instance: This store instance's id; its own notifications are skipped.
        deliver: Hands events to the local listeners.
        wake: Wakes this process's idle workers.
        fetch: Reads a job (None if it is gone) to complete a partial event.
        wanted: Whether anyone listens (events are not even decoded otherwise).
        resync: Called when notifications were dropped (the inbox was full).
        inbox_max: Notifications held at most.
        wake_for: When given, called instead of ``wake`` with the type of the event
            (one of :data:`~asyncjobs.stores.listeners.WAKE`).
    """

    def __init__(
        self,
        instance: str,
        *,
        deliver: Callable[[Collection[JobEvent]], None],
        wake: Callable[[], None],
        fetch: Callable[[str], Awaitable[Job | None]],
        wanted: Callable[[], bool],
        resync: Callable[[], None],
        inbox_max: int = INBOX_MAX,
        wake_for: Callable[[EventType], None] | None = None,
    ) -> None:
        self._instance = instance
        self._wake_for = wake_for
        # Every payload this instance sends starts so (see make_prefix): its own echoes
        # are recognised without decoding them, two of them per job.
        self._own = make_prefix(instance)
        self._deliver = deliver
        self._wake = wake
        self._fetch = fetch
        self._wanted = wanted
        self._resync = resync
        self._inbox_max = inbox_max
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(inbox_max)
        self._dropped = 0
        self._task: TaskHandle | None = None
        #: Notifications dropped because the inbox was full (tests and metrics).
        self.dropped_total = 0

    def start(self, tasks: BackgroundTasks) -> None:
        self._inbox = asyncio.Queue(self._inbox_max)
        self._dropped = 0
        self._task = tasks.start_soon(self._consume, "asyncjobs-pg-events")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await task.stop()

    def on_payload(self, payload: str) -> None:
        """Handle one notification (called by the LISTEN connection)."""
        if payload.startswith(self._own):
            return
        data = json.loads(payload)
        if data.get("src") == self._instance:
            return
        type_ = EventType(data["type"])
        if type_ in WAKE:
            if self._wake_for is not None:
                self._wake_for(type_)
            else:
                self._wake()
        if self._wanted():
            # One consumer keeps remote events in commit order, even when one of them
            # has to read its job back first.
            try:
                self._inbox.put_nowait(data)
            except asyncio.QueueFull:
                self._dropped += 1
                self.dropped_total += 1

    async def _consume(self) -> None:
        while True:
            if self._dropped and self._inbox.empty():
                logger.warning("dropped %d notifications (inbox full); resyncing", self._dropped)
                self._dropped = 0
                self._resync()
            data = await self._inbox.get()
            if not data.get("partial"):
                job = job_from_record(data["job"])
                self._deliver([JobEvent(EventType(data["type"]), int(data["seq"]), _at(data), job)])
                continue
            try:
                event = await self._complete(data)
            except Exception:  # a reader of the job gets it from the store anyway
                logger.exception("could not read back the job of a notification")
                continue
            if event is not None:
                self._deliver([event])

    async def _complete(self, data: dict[str, Any]) -> JobEvent | None:
        slim = job_from_record(data["job"]) if "job" in data else None
        current = await self._fetch(slim.id if slim is not None else data["id"])
        if current is not None and (slim is None or current.version == slim.version):
            job = current
        elif slim is not None and current is not None:
            # The job changed since; params and tags never change, so take them from
            # the newer snapshot (result, error and message stay as the slim one says).
            job = attrs.evolve(slim, params=current.params, tags=current.tags)
        elif slim is not None:
            job = slim  # deleted since: the slim snapshot is all there is
        else:
            return None
        return JobEvent(EventType(data["type"]), int(data["seq"]), _at(data), job)


def _at(data: dict[str, Any]) -> datetime:
    return parse_time(data["at"])
