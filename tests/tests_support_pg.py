"""Drop a test's own PostgreSQL schema, named in a store URL's ``?schema=``."""

from __future__ import annotations

import re

from asyncjobs.stores.postgres.schema import split_url


async def drop_schema(url: str) -> None:
    import asyncpg

    dsn, schema = split_url(url)
    assert schema is not None and re.fullmatch(r"aj_[a-z0-9_]+", schema)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
