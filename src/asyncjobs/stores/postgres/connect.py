"""Opening :class:`~.store.PostgresStore`: migrate the schema and open the pool, through outages.

A worker started while the server restarts waits for it, for the store's
``reconnect_timeout``, instead of exiting with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import anyio

from .pool import Pool, connection_errors
from .schema import apply_migrations, import_asyncpg

if TYPE_CHECKING:
    from .store import PostgresStore

__all__ = ["open_pool"]

logger = logging.getLogger("asyncjobs.store.postgres")


async def open_pool(store: PostgresStore) -> Pool:
    """Migrate and open the pool, retrying like every other call: a worker started
    while the server restarts waits for it instead of exiting with a traceback."""
    errors: tuple[type[BaseException], ...] = (*connection_errors(), asyncio.TimeoutError)
    deadline = anyio.current_time() + store._reconnect_timeout
    backoff, warned = 0.05, False
    while True:
        try:
            conn = await import_asyncpg().connect(store.dsn)
            try:
                await apply_migrations(conn, store.schema)
            finally:
                await conn.close()
            return await Pool.open(
                store.dsn,
                name=f"asyncjobs:{store.schema}",
                min_size=store._min_pool,
                max_size=store._max_pool,
                reconnect_timeout=store._reconnect_timeout,
                command_timeout=store._command_timeout,
            )
        except errors as exc:
            now = anyio.current_time()
            if now >= deadline:
                raise ConnectionError(
                    f"cannot open the PostgreSQL store at {store.url}: still unreachable "
                    f"after {store._reconnect_timeout:g}s ({type(exc).__name__}: {exc})"
                ) from exc
            if not warned:  # once per outage, not once per try
                logger.warning("cannot reach PostgreSQL at %s (%s); retrying", store.url, exc)
                warned = True
            await anyio.sleep(min(backoff, deadline - now))
            backoff = min(backoff * 2, 1.0)
