"""The event stream of :class:`~asyncjobs.stores.redis.RedisStore`: tail, decode, resync.

Every change script appends one entry to the queue's stream: ``q`` (the event seq, one
more than the previous entry's), ``t`` (type), ``a`` (time), ``i`` (the store instance
that made it: an instance hands its own events to its listeners directly and skips
their echo), ``d`` (the job record) and, for running jobs, ``w``/``k``/``e`` (the lease)
and ``c`` (claimed at; see :mod:`.scripts`).

A dedicated connection follows the stream from the last id it saw, so a reconnect (a
dropped connection, a Redis restart) resumes exactly where it stopped. Because seqs are
consecutive, a jump shows that entries were missed (the stream was trimmed past them,
or a restarted server lost its tail): then the store signals resync.

It does not block on the stream itself: a blocking ``XREAD`` there would wake for every
entry, this instance's own included (a round trip per submit for a process that only
submits). Instead, an instance that has read everything adds itself to ``P tails`` (in
the same script as its last read, :data:`TAIL`) and blocks on its own bell stream ``P
bell:<instance>``; every script that writes events copies them onto the bells of the
waiting instances other than its own, and takes them off the list (the ``ring`` of
:mod:`.scripts`). So another instance's events arrive in one hop, as before, and an
instance's own events never wake it: the store reports them (:meth:`StreamTail.wrote`),
which moves the position past them while nothing else came in between. A bell read that
times out (2 s) reads the stream again, so a writer that rings nobody (an older version
of this store) is still heard, just later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, final

import attrs

from ...codec import job_from_record, loads, parse_time
from ...job import EventType, Job, JobEvent, Lease
from ..steps import claim_step

__all__ = ["StreamTail", "materialize"]

logger = logging.getLogger("asyncjobs.store.redis")

_Fields = Mapping[bytes, bytes]


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode()


def materialize(
    doc: bytes | str,
    claimed_at: bytes | str | None,
    worker: bytes | str | None,
    token: bytes | str | None,
    expires: bytes | str | None,
) -> Job:
    """The job a hash (or a stream entry) describes: the stored record, the claim step
    applied when the claim script left it pending, and the lease from its own fields."""
    job = job_from_record(loads(doc))
    worker_s, token_s, expires_s = _text(worker), _text(token), _text(expires)
    claimed = _text(claimed_at)
    if claimed:
        assert worker_s is not None
        assert token_s is not None
        job = claim_step(job, worker_s, token_s, 0.0, parse_time(claimed))
    if token_s and worker_s is not None and expires_s is not None:
        lease = Lease(worker_s, token_s, parse_time(expires_s))
        if job.lease != lease:
            job = attrs.evolve(job, lease=lease)
    return job


def decode_event(fields: _Fields) -> JobEvent:
    job = materialize(
        fields[b"d"], fields.get(b"c"), fields.get(b"w"), fields.get(b"k"), fields.get(b"e")
    )
    return JobEvent(
        type=EventType(fields[b"t"].decode()),
        seq=int(fields[b"q"]),
        at=parse_time(fields[b"a"].decode()),
        job=job,
    )


#: Read what follows ``last id`` in the stream; with nothing there, wait on the bell.
#: KEYS: the stream. ARGV: prefix, instance, last id, count. Returns the entries (``[id,
#: fields]`` each); none: this instance's bell is emptied and it is on ``P tails``.
TAIL = r"""
local P, inst = ARGV[1], ARGV[2]
local got = redis.call('XREAD', 'COUNT', ARGV[4], 'STREAMS', KEYS[1], ARGV[3])
if got then return got[1][2] end
redis.call('DEL', P .. 'bell:' .. inst)
redis.call('SADD', P .. 'tails', inst)
return {}
"""

#: Milliseconds a wait on the bell lasts before the stream is read again.
BELL_WAIT = 2000


@final
class StreamTail:
    """Follows the stream on its own connection and hands every other instance's events on.

    Args:
        connect: Makes a new client (one connection) for the reads.
        poke: Appends an entry to the given (control) stream on another connection.
        prefix: The queue's key prefix (with its hash tag).
        instance: This store instance's id (its own entries are skipped).
        deliver: Called with each decoded event of another instance, and whether
            webhook deliveries were written with it.
        resync: Called when entries may have been missed.
        handed: Called instead of ``deliver`` for an event of a job handed to a parked
            worker (see :mod:`.handoff`), with the worker's member (``instance worker``).
        retry_cap: The longest pause between reconnection attempts.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        poke: Callable[[str], Awaitable[Any]],
        prefix: str,
        instance: str,
        deliver: Callable[[JobEvent, bool], None],
        resync: Callable[[], None],
        *,
        handed: Callable[[JobEvent, bytes], None] | None = None,
        retry_cap: float = 1.0,
    ) -> None:
        self._connect = connect
        self._poke = poke
        self._prefix = prefix
        self._key = prefix + "events"
        self._bell = f"{prefix}bell:{instance}"
        # Read with the bell: an entry here ends the blocking read (see stop()).
        self._control = f"{self._key}:stop:{instance}"
        self._stopping = False
        self._instance = instance.encode()
        self._deliver = deliver
        self._resync = resync
        self._handed = handed
        self._retry_cap = retry_cap
        self._last_id = b"0-0"
        self._seq = 0
        # Own writes reported ahead of the position: first seq -> (last seq, last id).
        self._own: dict[int, tuple[int, bytes]] = {}
        self._positioned = False
        self._client: Any = None
        self._script: Any = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        """Note where the stream ends now (what came before is history), then follow it."""
        self._client = self._connect()
        # Replies are taken as the server sends them (see _take): redis-py would build a
        # dict per entry.
        self._client.set_response_callback("XREAD", _as_is)
        self._script = self._client.register_script(TAIL)
        self._stopping = False
        if not self._positioned:  # a restart after stop() goes on from where it stopped
            await self._position()
            self._positioned = True
        self.connected.set()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="asyncjobs-redis-tail"
        )

    async def _position(self) -> None:
        last = await self._client.xrevrange(self._key, count=1)
        if last:
            entry_id, fields = last[0]
            self._last_id, self._seq = entry_id, int(fields[b"q"])

    @property
    def position(self) -> tuple[int, bytes]:
        """The seq and the stream id of the last entry taken in."""
        return self._seq, self._last_id

    def wrote(self, first_seq: int, last_seq: int, last_id: bytes) -> None:
        """This instance wrote the entries ``first_seq..last_seq`` (the last one
        ``last_id``): once they follow what was read, the position moves past them.

        Replies come back on several connections, so a later write can be reported
        first: it waits here until the writes before it are in.
        """
        if last_seq <= self._seq:
            return
        own = self._own
        own[first_seq] = (last_seq, last_id)
        self._advance()
        if len(own) > 256:  # reports the stream read has passed meanwhile
            for first in [f for f, (last, _) in own.items() if last <= self._seq]:
                del own[first]

    def _advance(self) -> None:
        own = self._own
        while (ahead := own.pop(self._seq + 1, None)) is not None:
            self._seq, self._last_id = ahead

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            # Cancelling a blocked XREAD can leave redis-py waiting on the dead read, so
            # the read is ended from the server side instead; cancel only as a fallback.
            self._stopping = True
            with contextlib.suppress(Exception):
                await self._poke(self._control)
            done, _ = await asyncio.wait({task}, timeout=5.0)
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=5.0)
        client, self._client = self._client, None
        if client is not None:
            # Bounded: closing a connection that a cancelled read still holds can hang.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), 5.0)

    async def _run(self) -> None:
        from redis.exceptions import ConnectionError, TimeoutError

        pause = 0.05
        bell = self._bell.encode()
        args = [self._prefix, self._instance, b"", 1000]
        while not self._stopping:
            try:
                if not self.connected.is_set():
                    await self._reconnected()
                args[2] = self._last_id
                entries = await self._script(keys=[self._key], args=args, client=self._client)
                if entries:
                    for entry_id, flat in entries:
                        self._take(entry_id, flat)
                    continue
                reply = await self._client.execute_command(
                    "XREAD",
                    "COUNT",
                    1000,
                    "BLOCK",
                    BELL_WAIT,
                    "STREAMS",
                    self._bell,
                    self._control,
                    "0-0",
                    "0-0",
                )
                pause = 0.05
            except (ConnectionError, TimeoutError, OSError) as exc:
                if self.connected.is_set():
                    logger.warning("redis event stream: %s; reconnecting", exc)
                self.connected.clear()
                await asyncio.sleep(pause)
                pause = min(pause * 2, self._retry_cap)
                continue
            streams = reply.items() if isinstance(reply, dict) else reply or ()  # RESP3, 2
            for stream, copies in streams:
                if stream != bell:
                    continue
                for _, flat in copies:  # x, the entry's id in the stream, q, seq, fields
                    seq = int(flat[3])
                    if seq > self._seq + 1:
                        # Entries before it are not in hand: this instance's own, not
                        # reported yet (its reply is on another connection), or missed.
                        # The stream has them all, in order: read it there.
                        break
                    if seq == self._seq + 1:
                        self._take(flat[1], flat[2:])
        with contextlib.suppress(Exception):
            await self._client.delete(self._control, self._bell)
            await self._client.srem(self._prefix + "tails", self._instance)

    async def _reconnected(self) -> None:
        """After a reconnect: if the stream now ends before our last id, the server lost
        history (a restart without persistence): start again from its end, and resync."""
        last = await self._client.xrevrange(self._key, count=1)
        self.connected.set()
        if not last or _id_tuple(last[0][0]) < _id_tuple(self._last_id):
            logger.warning("redis event stream went back in time; resyncing")
            self._last_id = last[0][0] if last else b"0-0"
            self._seq = int(last[0][1][b"q"]) if last else 0
            self._own.clear()
            self._signal_resync()
        logger.info("redis event stream: reconnected")

    def _take(self, entry_id: bytes, flat: list[bytes]) -> None:
        """One entry, its fields as a flat list (name, value, ...)."""
        fields: _Fields | None = None
        instance: bytes | None
        if len(flat) > 7 and flat[0] == b"q" and flat[6] == b"i":  # as the scripts write
            seq, instance = int(flat[1]), flat[7]
        else:
            fields = _pairs(flat)
            seq, instance = int(fields[b"q"]), fields.get(b"i")
        if seq != self._seq + 1:
            if seq <= self._seq and _id_tuple(entry_id) <= _id_tuple(self._last_id):
                return  # read already: this instance's own, reported by wrote()
            logger.warning("redis event stream: seq %d after %d; resyncing", seq, self._seq)
            self._signal_resync()
        self._last_id = entry_id
        self._seq = seq
        if self._own:
            self._advance()
        if instance == self._instance:
            return  # this instance handed it to its listeners when it made it
        event_fields = fields if fields is not None else _pairs(flat)
        try:
            event = decode_event(event_fields)
        except Exception:  # a malformed entry must not stop the stream
            logger.exception("undecodable event entry %r", entry_id)
            return
        member = event_fields.get(b"h")
        if member is not None and self._handed is not None:
            self._handed(event, member)
            return
        self._deliver(event, b"o" in event_fields)

    def _signal_resync(self) -> None:
        try:
            self._resync()
        except Exception:
            logger.exception("resync callback failed")


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=False))


def _as_is(response: Any, **options: Any) -> Any:
    return response


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, n = text.partition("-")
    return int(ms), int(n or 0)
