"""The webhook registry and outbox of :class:`~asyncjobs.stores.redis.RedisStore`.

Keys under the queue's hash tag (``P`` as in :mod:`.scripts`):

=========================  ======================================================
``P webhooks``             hash: hook id -> its record (JSON: url, events, secret)
``P webhooks:ev``          hash: hook id -> ``,job_completed,job_failed,`` (what the
                           commit script matches a job's end against)
``P webhooks:created``     hash: hook id -> created at (ISO; kept on re-registration)
``P webhooks:order``       zset: hook ids by registration (oldest first)
``P dlv:<id>``             hash: one delivery: ``w`` hook, ``ev`` event, ``d`` the job
                           record at its end, ``at``, ``st`` status, ``n`` attempts,
                           ``nx`` next attempt (ISO), ``le`` last error,
                           ``da`` delivered at
``P dlv:due``              zset: pending delivery ids by next attempt (epoch)
``P dlv:hook:<hook>``      zset: one hook's delivery ids by creation (``P dlv:n``)
=========================  ======================================================

Deliveries are written by the commit script (:data:`.scripts.COMMIT`) in the same
step as the job's end; the scripts here register hooks and move deliveries along.
"""

from __future__ import annotations

import builtins
import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, final

from ...codec import dumps, format_time, parse_time
from ...webhooks.model import Delivery, DeliveryStatus, Webhook, WebhookNotFound
from .events import materialize

__all__ = ["WebhookOutbox"]

#: Longest a claim that found nothing due is trusted, in seconds of the caller's clock:
#: a delivery rescheduled by another process's dispatcher is not announced.
QUIET = 1.0

_FIELDS = ("w", "ev", "d", "at", "st", "n", "nx", "le", "da")

#: ARGV: prefix, hook id, record, events (``,a,b,``), now (ISO). Returns created at.
ADD = r"""
local P, id = ARGV[1], ARGV[2]
redis.call('HSET', P .. 'webhooks', id, ARGV[3])
redis.call('HSET', P .. 'webhooks:ev', id, ARGV[4])
redis.call('HSETNX', P .. 'webhooks:created', id, ARGV[5])
if not redis.call('ZSCORE', P .. 'webhooks:order', id) then
  redis.call('ZADD', P .. 'webhooks:order', redis.call('INCR', P .. 'webhooks:n'), id)
end
return redis.call('HGET', P .. 'webhooks:created', id)
"""

#: ARGV: prefix, hook id. Returns 0 when there is no such hook.
DELETE = r"""
local P, id = ARGV[1], ARGV[2]
if redis.call('HDEL', P .. 'webhooks', id) == 0 then return 0 end
redis.call('HDEL', P .. 'webhooks:ev', id)
redis.call('HDEL', P .. 'webhooks:created', id)
redis.call('ZREM', P .. 'webhooks:order', id)
local list = P .. 'dlv:hook:' .. id
for _, did in ipairs(redis.call('ZRANGE', list, 0, -1)) do
  redis.call('DEL', P .. 'dlv:' .. did)
  redis.call('ZREM', P .. 'dlv:due', did)
end
redis.call('DEL', list)
return 1
"""

#: ARGV: prefix, now (epoch), limit, hidden until (ISO), hidden until (epoch).
#: Returns ``{next, rows}``: when the next pending delivery is due (epoch; '' for none),
#: and per claimed delivery: id, its fields (as ``_FIELDS``), the hook's record, created at.
CLAIM = r"""
local P = ARGV[1]
local due = redis.call('ZRANGEBYSCORE', P .. 'dlv:due', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for _, did in ipairs(due) do
  local key = P .. 'dlv:' .. did
  local h = redis.call('HMGET', key, 'w', 'ev', 'd', 'at', 'st', 'n', 'nx', 'le', 'da')
  local hook = h[1] and redis.call('HGET', P .. 'webhooks', h[1])
  if not hook then  -- its hook is gone
    redis.call('ZREM', P .. 'dlv:due', did)
  else
    redis.call('HSET', key, 'nx', ARGV[4])
    redis.call('ZADD', P .. 'dlv:due', ARGV[5], did)
    h[7] = ARGV[4]
    out[#out + 1] = {did, h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], hook,
                     redis.call('HGET', P .. 'webhooks:created', h[1])}
  end
end
local nxt = redis.call('ZRANGE', P .. 'dlv:due', 0, 0, 'WITHSCORES')
return {nxt[2] or '', out}
"""

#: ARGV: prefix, delivery id, status, next attempt (ISO, epoch; '' for none), last error
#: ('' for none), delivered at ('' for none).
FINISH = r"""
local P, did = ARGV[1], ARGV[2]
local key = P .. 'dlv:' .. did
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HINCRBY', key, 'n', 1)
redis.call('HSET', key, 'st', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', key, 'nx', ARGV[4])
  redis.call('ZADD', P .. 'dlv:due', ARGV[5], did)
else
  redis.call('HDEL', key, 'nx')
  redis.call('ZREM', P .. 'dlv:due', did)
end
if ARGV[6] ~= '' then redis.call('HSET', key, 'le', ARGV[6]) else redis.call('HDEL', key, 'le') end
if ARGV[7] ~= '' then redis.call('HSET', key, 'da', ARGV[7]) else redis.call('HDEL', key, 'da') end
return 1
"""


#: ARGV: prefix, then delivery ids. Deletes those still finished (not pending again).
PURGE = r"""
local P, n = ARGV[1], 0
for i = 2, #ARGV do
  local did = ARGV[i]
  local key = P .. 'dlv:' .. did
  local h = redis.call('HMGET', key, 'st', 'w')
  if h[1] and h[1] ~= 'pending' then
    redis.call('DEL', key)
    redis.call('ZREM', P .. 'dlv:due', did)
    redis.call('ZREM', P .. 'dlv:hook:' .. h[2], did)
    n = n + 1
  end
end
return n
"""


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _time(value: bytes | None) -> datetime | None:
    return None if value is None else parse_time(value.decode())


def _hook(record: bytes, created: bytes | None) -> Webhook:
    data = json.loads(record)
    return Webhook(
        id=data["id"],
        url=data["url"],
        events=tuple(data["events"]),
        secret=data["secret"],
        created_at=_time(created),
    )


def _delivery(delivery_id: str, row: Sequence[Any]) -> Delivery:
    hook, event, doc, at, status, attempts, next_at, error, delivered = row
    at_time = _time(at)
    assert at_time is not None
    return Delivery(
        id=delivery_id,
        webhook_id=hook.decode(),
        event=event.decode(),
        job=materialize(doc, None, None, None, None),
        at=at_time,
        status=status.decode(),
        attempts=int(attempts),
        next_at=_time(next_at),
        last_error=_text(error),
        delivered_at=_time(delivered),
    )


@final
class WebhookOutbox:
    """The webhook operations of one queue (key prefix ``p``)."""

    def __init__(self, redis: Callable[[], Any], p: str) -> None:
        self._redis = redis
        self._p = p
        self._scripts: dict[str, Any] = {}
        # The dispatcher asks after every job end; without a webhook that is a round
        # trip per finish batch for nothing. A claim that left nothing due now says
        # when the next delivery is due: until then (at most QUIET), claims answer
        # without asking, unless a delivery may have been written since (written()).
        self._quiet_until: float | None = None
        self._writes = 0

    def written(self) -> None:
        """A delivery may have become due: a commit wrote one, a delivery was put off,
        or events were missed."""
        self._quiet_until = None
        self._writes += 1

    async def _run(self, name: str, source: str, *args: Any) -> Any:
        # redis-py's Script reloads itself when a restarted server forgot it; it runs on
        # the store's current client, so a reopened store works too.
        client = self._redis()
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = client.register_script(source)
        return await script(keys=[self._p + "webhooks"], args=[self._p, *args], client=client)

    async def add(self, hook: Webhook, *, now: datetime) -> Webhook:
        record = dumps(
            {"id": hook.id, "url": hook.url, "events": list(hook.events), "secret": hook.secret}
        )
        events = "," + ",".join(hook.events) + ","
        created = await self._run("add", ADD, hook.id, record, events, format_time(now))
        return _hook(record.encode(), created)

    async def list(self) -> builtins.list[Webhook]:
        client = self._redis()
        ids = await client.zrange(self._p + "webhooks:order", 0, -1)
        if not ids:
            return []
        pipe = client.pipeline(transaction=True)
        pipe.hmget(self._p + "webhooks", ids)
        pipe.hmget(self._p + "webhooks:created", ids)
        records, created = await pipe.execute()
        return [_hook(r, c) for r, c in zip(records, created, strict=True) if r is not None]

    async def delete(self, webhook_id: str) -> None:
        if not await self._run("delete", DELETE, webhook_id):
            raise WebhookNotFound(webhook_id)

    async def claim(
        self, *, now: datetime, limit: int, lease: float
    ) -> builtins.list[tuple[Delivery, Webhook]]:
        if limit <= 0:
            return []
        stamp = now.timestamp()
        if self._quiet_until is not None and stamp < self._quiet_until:
            return []
        self._quiet_until = None
        writes = self._writes  # a write announced during the call is not lost
        until = now + timedelta(seconds=lease)
        nxt, rows = await self._run(
            "claim", CLAIM, repr(stamp), str(limit), format_time(until), repr(until.timestamp())
        )
        claimed = [(_delivery(r[0].decode(), r[1:10]), _hook(r[10], r[11])) for r in rows]
        if len(claimed) < limit and writes == self._writes:
            self._quiet_until = min(stamp + QUIET, float(nxt) if nxt else math.inf)
        return claimed

    async def finish(
        self,
        delivery_id: str,
        *,
        now: datetime,
        ok: bool,
        error: str | None,
        retry_at: datetime | None,
    ) -> None:
        if ok:
            status, next_at, delivered = DeliveryStatus.DELIVERED, None, format_time(now)
        elif retry_at is not None:
            status, next_at, delivered = DeliveryStatus.PENDING, retry_at, ""
        else:
            status, next_at, delivered = DeliveryStatus.DEAD, None, ""
        await self._run(
            "finish",
            FINISH,
            delivery_id,
            status,
            "" if next_at is None else format_time(next_at),
            "" if next_at is None else repr(next_at.timestamp()),
            "" if ok or error is None else error,
            delivered,
        )
        if next_at is not None:
            self.written()

    async def deliveries(
        self, webhook_id: str, *, status: str | None, limit: int
    ) -> builtins.list[Delivery]:
        client = self._redis()
        if not await client.hexists(self._p + "webhooks", webhook_id):
            raise WebhookNotFound(webhook_id)
        found: builtins.list[Delivery] = []
        start, batch = 0, max(limit, 100) if status is not None else limit
        while len(found) < limit:
            ids = [
                i.decode()
                for i in await client.zrevrange(
                    self._p + "dlv:hook:" + webhook_id, start, start + batch - 1
                )
            ]
            if not ids:
                break
            pipe = client.pipeline(transaction=False)
            for did in ids:
                pipe.hmget(self._p + "dlv:" + did, *_FIELDS)
            for did, row in zip(ids, await pipe.execute(), strict=True):
                if row[0] is None or (status is not None and row[4].decode() != status):
                    continue
                found.append(_delivery(did, row))
                if len(found) == limit:
                    break
            start += batch
        return found

    async def purge(self, *, before: datetime, limit: int) -> int:
        client = self._redis()
        doomed: builtins.list[str] = []
        for hook in await client.zrange(self._p + "webhooks:order", 0, -1):
            if len(doomed) >= limit:
                break
            ids = [
                i.decode()
                for i in await client.zrange(self._p + "dlv:hook:" + hook.decode(), 0, -1)
            ]
            pipe = client.pipeline(transaction=False)
            for did in ids:
                pipe.hmget(self._p + "dlv:" + did, "st", "da", "at")
            for did, (status, delivered, at) in zip(ids, await pipe.execute(), strict=True):
                if status is None or status.decode() == DeliveryStatus.PENDING:
                    continue
                when = _time(delivered) or _time(at)
                if when is not None and when < before:
                    doomed.append(did)
                    if len(doomed) >= limit:
                        break
        if not doomed:
            return 0
        return int(await self._run("purge", PURGE, *doomed))
