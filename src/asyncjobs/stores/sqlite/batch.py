"""Group commit: every write queued while the previous transaction ran goes out in one.

Each store call that writes is an :class:`Op`: a body run against the connection inside
a write transaction. The store thread (thread.py) takes every op queued on the event
loop since its last transaction and runs them with :func:`run_batch` in one ``BEGIN
IMMEDIATE`` ... ``COMMIT``: one commit (one WAL append) and one hop to the thread and
back for the whole batch, however many finishes, progress updates and claims it holds.

Ops run in the order they were queued, each seeing the writes of those before it, so a
batch ends in the state the same calls would reach one transaction at a time. An op
that raises fails only its own caller:

* an op that raises before it wrote anything (a stale fencing token, a missing job, an
  illegal transition: the steps check before they write) is simply left out;
* an op that raises after writing has its writes undone by running the batch again
  without it, from a fresh transaction (rare: no hot-path op writes before checking).

The events the ops emit get their ``seq`` inside the transaction, from the counter in
the file, in op order, and are handed to the event loop after the commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, final

from ...codec import format_time
from ...job import EventType, Job, JobEvent
from .rows import RowCache
from .schema import job_record
from .webhooks import write_outbox

__all__ = ["EVENT_KEEP_SECONDS", "Changes", "Op", "run_batch"]

#: Events kept for other processes to tail: anything younger than this stays; a process
#: that falls further behind sees a gap in the sequence and resyncs.
EVENT_KEEP_SECONDS = 60.0
#: Trim the events table once per this many batches that appended events.
_TRIM_EVERY = 256
#: The events of a job's end: each queues its webhook deliveries (webhooks.py).
_ENDS = frozenset({EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED})


@final
class Changes:
    """What one op tells the event loop once its transaction has committed."""

    __slots__ = ("events", "pending", "wake")

    def __init__(self) -> None:
        #: (type, job, at, record): ``record`` is the job's stored JSON when the op has
        #: it at hand (the events table embeds it instead of encoding the job again).
        self.pending: list[tuple[EventType, Job, datetime, str | None]] = []
        self.events: list[JobEvent] = []
        self.wake = False

    def emit(self, type: EventType, job: Job, at: datetime, record: str | None = None) -> None:
        self.pending.append((type, job, at, record))


@final
class Op:
    """One queued write: its body, the caller's future, and (on the thread) its result."""

    __slots__ = ("body", "changes", "error", "future", "value")

    def __init__(
        self, body: Callable[[sqlite3.Connection, Changes], Any], future: asyncio.Future[Any]
    ) -> None:
        self.body = body
        self.future = future
        self.changes = Changes()
        self.value: Any = None
        self.error: BaseException | None = None


@final
class Seq:
    """The store instance's view of the event counter and of its peers (thread only)."""

    __slots__ = ("last", "peers_present", "src", "writes")

    def __init__(self, src: str) -> None:
        self.src = src
        #: The last event seq this connection wrote (read by the tail).
        self.last = 0
        #: Whether another store instance tails this file (set by the tail); only then
        #: are events appended to the events table.
        self.peers_present = False
        self.writes = 0


def run_batch(conn: sqlite3.Connection, ops: list[Op], seq: Seq, cache: RowCache) -> None:
    """Run ``ops`` in one write transaction on the store thread; see the module docstring.

    Sets each op's ``value`` or ``error`` and its ``changes.events``. Raises when the
    transaction itself fails (``BEGIN``, the sequence, ``COMMIT``): then nothing was
    written and every op has failed.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        live = ops
        while True:
            dirty = _apply(conn, live)
            if dirty is None:
                break
            # Undo the failed op's writes: start over without it (its error is kept).
            cache.clear()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            live = [op for op in live if op is not dirty]
        last = _number_events(conn, live, seq)
        conn.execute("COMMIT")
        if last is not None:  # the tail skips these (delivered at commit): once committed
            seq.last = last
    except BaseException:
        cache.clear()  # it may hold rows that were never committed
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _apply(conn: sqlite3.Connection, ops: list[Op]) -> Op | None:
    """Run each op's body; return the first op that failed after writing, if any."""
    for op in ops:
        op.changes = Changes()
        op.error = None
        before = conn.total_changes
        try:
            op.value = op.body(conn, op.changes)
        except Exception as exc:  # fails this op's caller only
            op.error = exc
            op.changes = Changes()
            if conn.total_changes != before or not conn.in_transaction:
                return op
    return None


def _number_events(conn: sqlite3.Connection, ops: list[Op], seq: Seq) -> int | None:
    """Give the ops' events their seq, append them for other processes when some
    listen, and queue the webhook deliveries of the jobs that ended; return the last
    seq (None without events)."""
    count = sum(len(op.changes.pending) for op in ops if op.error is None)
    if not count:
        return None
    (stored,) = conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
    last = int(stored)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (last + count,))
    first = last
    rows: list[tuple[int, str, int, str]] = []
    ended: list[tuple[Job, str]] = []
    stamp = int(time.time() * 1e6)
    for op in ops:
        if op.error is not None:
            continue
        changes = op.changes
        events = changes.events
        for type_, job, at, record in changes.pending:
            last += 1
            events.append(JobEvent(type=type_, seq=last, at=at, job=job))
            if type_ in _ENDS:
                record = record or job_record(job)
                ended.append((job, record))
            if seq.peers_present:
                rows.append((last, seq.src, stamp, _event_json(type_, last, at, job, record)))
    if rows:
        _append_events(conn, rows, seq, first, stamp)
    if ended:
        write_outbox(conn, ended)
    return last


def _event_json(type_: EventType, n: int, at: datetime, job: Job, record: str | None) -> str:
    """The events table's record: ``codec.event_to_record`` as JSON, the job's stored
    record embedded as it is rather than encoded a second time."""
    if record is None:
        record = job_record(job)
    return f'{{"type":"{type_.value}","seq":{n},"at":"{format_time(at)}","job":{record}}}'


def _append_events(
    conn: sqlite3.Connection,
    rows: list[tuple[int, str, int, str]],
    seq: Seq,
    first: int,
    stamp: int,
) -> None:
    conn.executemany("INSERT INTO events (seq, src, stamp, record) VALUES (?, ?, ?, ?)", rows)
    seq.writes += 1
    if seq.writes % _TRIM_EVERY == 0:
        cutoff = stamp - int(EVENT_KEEP_SECONDS * 1e6)
        conn.execute("DELETE FROM events WHERE seq <= ? AND stamp < ?", (first, cutoff))
