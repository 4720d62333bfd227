"""How :class:`~asyncjobs.stores.redis.RedisStore` connects: the pool, the tail's own
connection, reconnection, and command packing in C.

redis-py packs every argument of a command in Python (an encode call and a few bytes
joins per argument, before 8.0 even with hiredis installed); a script call with a
batch of jobs has hundreds of arguments. ``hiredis.pack_command`` (hiredis is part of
``asyncjobs[redis]``) packs the same bytes in one C call, so the connections this module
makes use it whenever hiredis takes the arguments (``str``/``bytes``/``int``/``float``).
"""

from __future__ import annotations

import functools
from typing import Any

from ...errors import ConfigurationError

__all__ = ["import_redis", "make_client"]


def import_redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise ConfigurationError(
            "the Redis store needs redis-py: pip install 'asyncjobs[redis]'"
        ) from None
    return aioredis


@functools.cache
def _fast(connection_class: Any) -> Any:
    """``connection_class`` packing its commands with ``hiredis.pack_command``."""
    try:
        from hiredis import pack_command
    except ImportError:  # an old hiredis, or none: redis-py packs
        return connection_class

    def pack(self: Any, *args: Any) -> list[bytes]:
        head = args[0]
        # The rules of redis-py's own packer: a command name may carry literal
        # arguments ("CLIENT SETNAME"); what hiredis refuses (bool, None, anything but
        # str/bytes/int/float) goes there too, to be refused with redis-py's error. No
        # check per argument: a script call with a batch has hundreds.
        if not (isinstance(head, str) and " " in head):
            try:
                return [pack_command(args)]
            except TypeError:
                pass
        packed: list[bytes] = connection_class.pack_command(self, *args)
        return packed

    return type("Fast" + connection_class.__name__, (connection_class,), {"pack_command": pack})


def make_client(url: str, *, reconnect_timeout: float, max_connections: int) -> Any:
    """A client on a blocking pool (a burst of calls beyond the pool waits for a
    connection rather than failing) that retries through an outage for up to
    ``reconnect_timeout`` seconds."""
    aioredis = import_redis()
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, TimeoutError

    cap = 0.5
    retry = Retry(ExponentialBackoff(cap=cap, base=0.02), int(reconnect_timeout / cap) + 5)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=None,
        retry=retry,
        retry_on_error=[ConnectionError, TimeoutError, OSError],
        socket_keepalive=True,
    )
    pool.connection_class = _fast(pool.connection_class)
    return aioredis.Redis.from_pool(pool)


def make_tail_client(url: str, *, name: str) -> Any:
    """One connection for the blocking stream reads. It does not retry: a connection
    error must reach the tail, which checks what the server kept (see ``StreamTail``)."""
    aioredis = import_redis()
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = aioredis.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
        socket_keepalive=True,
        single_connection_client=True,
        socket_timeout=15.0,
        client_name=name,
    )
    pool = client.connection_pool
    pool.connection_class = _fast(pool.connection_class)
    return client
