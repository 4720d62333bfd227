"""The worker registry of :class:`~asyncjobs.stores.redis.RedisStore`.

Two keys under the queue's hash tag (so they share the jobs' Redis Cluster slot):

=======================  ========================================================
``P workers``            hash: worker id -> its record (JSON, :mod:`asyncjobs.codec`)
``P workers:exp``        zset: worker ids by record expiry (epoch seconds)
=======================  ========================================================

A heartbeat replaces the worker's record and drops the records of workers that died
(expired at or before the heartbeat) in one script, so listing stays a plain read; the
listing filters on each record's own ``expires_at``, exactly, never on a float score.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, final

from ...codec import dumps, worker_from_record, worker_to_record
from ..protocol import WorkerInfo

__all__ = ["WorkerRegistry"]

#: KEYS: records hash, expiry zset. ARGV: worker id, record, expiry (epoch), heartbeat
#: (epoch): records that expired at or before it go.
REGISTER = r"""
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
for _, id in ipairs(dead) do
  if id ~= ARGV[1] then
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

#: KEYS: records hash, expiry zset. ARGV: worker id.
REMOVE = r"""
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


@final
class WorkerRegistry:
    """Registers, lists and removes worker records of one queue (key prefix ``p``)."""

    def __init__(self, redis: Callable[[], Any], p: str) -> None:
        self._redis = redis
        self._keys = [p + "workers", p + "workers:exp"]
        self._scripts: dict[str, Any] = {}

    def _script(self, name: str, source: str) -> Any:
        # redis-py's Script reloads itself when a restarted server forgot it; it is
        # called with the store's current client, so a reopened store works too.
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._redis().register_script(source)
        return script

    async def register(self, info: WorkerInfo) -> None:
        await self._script("register", REGISTER)(
            client=self._redis(),
            keys=self._keys,
            args=[
                info.id,
                dumps(worker_to_record(info)),
                repr(info.expires_at.timestamp()),
                repr(info.last_heartbeat.timestamp()),
            ],
        )

    async def list(self, *, now: datetime) -> builtins.list[WorkerInfo]:
        raw = await self._redis().hgetall(self._keys[0])
        workers = (worker_from_record(json.loads(v)) for v in raw.values())
        return sorted((w for w in workers if w.expires_at > now), key=lambda w: w.id)

    async def remove(self, worker_id: str) -> None:
        await self._script("remove", REMOVE)(
            client=self._redis(), keys=self._keys, args=[worker_id]
        )
