"""Events and wake-ups between the processes that share one SQLite file.

Each write transaction appends its events to the ``events`` table (thread.py). Every
store instance tails that table for rows other instances wrote: ``PRAGMA
data_version`` changes exactly when another connection has committed, so an idle poll
is one cheap pragma on the store's thread (every :data:`POLL_INTERVAL` seconds), and
the table is read only after a foreign commit. Rows carry the writing instance's id,
so an instance skips its own events (it delivered them at commit already).

The sequence has no holes (it is drawn inside the write transactions, which SQLite
serializes), so a tail that finds the next row missing knows it fell behind the
table's trimming: it delivers what is there and calls ``resync``.

One process alone on a file pays nothing for this: each instance announces itself in
the ``peers`` table every :data:`PEER_REFRESH` seconds, and writers append events only
while another instance is there. A newcomer's first seconds (before the writers have
seen it) show up to it as a gap in the sequence, so it resyncs then.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import final

import anyio

from ...codec import event_from_record
from ...job import JobEvent
from ..listeners import LocalNotifier
from .thread import SqliteThread

__all__ = ["POLL_INTERVAL", "EventTail"]

logger = logging.getLogger("asyncjobs.store.sqlite")

#: Seconds between checks for another process's commits.
POLL_INTERVAL = 0.025
#: Rows read per poll; a longer backlog is read on the next polls without waiting.
_BATCH = 2000
#: Seconds between refreshes of this instance's row in ``peers``.
PEER_REFRESH = 1.0
#: Seconds a row in ``peers`` lasts without a refresh (a crashed process's row goes).
PEER_TTL = 5.0


@final
class EventTail:
    """Tails the ``events`` table of one store instance; see the module docstring."""

    def __init__(
        self, thread: SqliteThread, notifier: LocalNotifier, *, interval: float = POLL_INTERVAL
    ) -> None:
        self._thread = thread
        self._notifier = notifier
        self._interval = interval
        self._version: int | None = None
        self._seq = 0
        #: Times the tail found a gap and resynced (tests and diagnostics read it).
        self.gaps = 0

    async def start(self) -> None:
        """Start after the events that exist now (call once the store is open).

        When other instances tail the file, wait a few poll intervals: by then they
        have seen this one and append their events for it."""

        def body(conn: sqlite3.Connection) -> tuple[int, int]:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            (seq,) = conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
            return int(version), int(seq)

        self._version, self._seq = await self._thread.read(body)
        await self.refresh_peers()
        if self._thread.seq.peers_present:
            await anyio.sleep(3 * self._interval)

    async def refresh_peers(self) -> None:
        """Announce this instance; learn whether another one tails the file."""
        src = self._thread.src
        thread = self._thread

        def body(conn: sqlite3.Connection, changes: object) -> None:
            now = int(time.time() * 1e6)
            conn.execute("DELETE FROM peers WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT OR REPLACE INTO peers (src, expires_at) VALUES (?, ?)",
                (src, now + int(PEER_TTL * 1e6)),
            )
            (others,) = conn.execute("SELECT COUNT(*) FROM peers WHERE src != ?", (src,)).fetchone()
            thread.seq.peers_present = others > 0

        await thread.write(body)

    async def leave(self) -> None:
        """Remove this instance's row (on close; a crash leaves it to expire)."""
        src = self._thread.src

        def body(conn: sqlite3.Connection, changes: object) -> None:
            conn.execute("DELETE FROM peers WHERE src = ?", (src,))

        await self._thread.write(body)

    async def run(self) -> None:
        """Poll until cancelled."""
        backoff = self._interval
        refreshed = time.monotonic()
        while True:
            try:
                if time.monotonic() - refreshed >= PEER_REFRESH:
                    refreshed = time.monotonic()
                    await self.refresh_peers()
                more = await self.poll()
            except sqlite3.Error as exc:  # e.g. disk I/O: log, back off, try again
                logger.warning("tailing SQLite events failed (%s); retrying", exc)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = self._interval
            if not more:
                await anyio.sleep(self._interval)

    async def poll(self) -> bool:
        """Deliver what other instances wrote since the last poll; True if more wait."""
        events, gap, more = await self._thread.read(self._read)
        if events:
            self._notifier.emit(events)
        if gap:
            self.gaps += 1
            self._notifier.resync()
        return more

    def _read(self, conn: sqlite3.Connection) -> tuple[list[JobEvent], bool, bool]:
        # On the store's thread, serialized with its writes.
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        if version == self._version:
            # Nobody else committed since the last poll: rows past our position are all
            # our own (delivered at commit), so skip them without reading.
            self._seq = max(self._seq, self._thread.seq.last)
            return [], False, False
        conn.execute("BEGIN")  # one snapshot for the rows and the sequence
        try:
            rows = conn.execute(
                "SELECT seq, src, record FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._seq, _BATCH),
            ).fetchall()
            (last,) = conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
            # A newcomer announces itself with a commit, so writers learn of it here,
            # within a poll, not only at their next refresh.
            (others,) = conn.execute(
                "SELECT COUNT(*) FROM peers WHERE src != ? AND expires_at > ?",
                (self._thread.src, int(time.time() * 1e6)),
            ).fetchone()
            self._thread.seq.peers_present = others > 0
        finally:
            conn.execute("COMMIT")
        more = len(rows) == _BATCH
        if not more:
            self._version = version  # read the version first: later commits show next time
        # No holes but trimmed ones: a first row past the next seq, or a sequence past
        # the last row, means events were trimmed before this instance read them.
        gap = bool(rows) and rows[0][0] > self._seq + 1
        if not more and last > (rows[-1][0] if rows else self._seq):
            gap = True
        src = self._thread.src
        events: list[JobEvent] = []
        for seq, origin, record in rows:
            self._seq = seq
            if origin != src:
                events.append(event_from_record(json.loads(record)))
        if not more:
            self._seq = max(self._seq, last)
        return events, gap, more
