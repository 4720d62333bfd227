"""PostgreSQL schema of :class:`~asyncjobs.stores.postgres.PostgresStore`: versioned migrations.

Every table lives in one PostgreSQL schema (``asyncjobs`` by default), so several queues
(or test runs) share a database without seeing each other. Migrations are numbered and
applied in order inside one transaction that first takes a transaction-level advisory
lock keyed on the schema name: processes starting at the same moment apply each
migration exactly once, and a process never sees a half-migrated schema.

Columns other than ``record`` duplicate fields of the job record that queries filter or
sort on; ``record`` (the :func:`asyncjobs.codec.job_to_record` JSON) is the truth.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...errors import ConfigurationError

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "MIGRATIONS",
    "apply_migrations",
    "check_schema_name",
    "import_asyncpg",
    "migrate",
    "quote_ident",
    "redact",
    "split_url",
]

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")

#: (version, SQL) in order; ``{s}`` is the quoted schema name. Never edit a released
#: migration: add a new one.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE {s}.jobs (
            id text COLLATE "C" PRIMARY KEY,  -- bytewise: the same order as Python's
            type text NOT NULL,
            status text NOT NULL,
            priority integer NOT NULL DEFAULT 0,
            run_at timestamptz NOT NULL,
            finished_at timestamptz,
            retention double precision,
            idempotency_key text,
            owner text,
            lease_token text,
            lease_expires_at timestamptz,
            record jsonb NOT NULL
        );
        CREATE UNIQUE INDEX jobs_idempotency_key ON {s}.jobs (idempotency_key)
            WHERE idempotency_key IS NOT NULL;
        -- claim: the head of the queue, in claim order
        CREATE INDEX jobs_claim ON {s}.jobs (priority DESC, id) WHERE status = 'queued';
        CREATE INDEX jobs_lease ON {s}.jobs (lease_expires_at) WHERE status = 'running';
        CREATE INDEX jobs_scheduled ON {s}.jobs (run_at) WHERE status = 'scheduled';
        -- list filters, newest first
        CREATE INDEX jobs_status_id ON {s}.jobs (status, id);
        CREATE INDEX jobs_type_id ON {s}.jobs (type, id);
        CREATE INDEX jobs_owner_id ON {s}.jobs (owner, id) WHERE owner IS NOT NULL;
        CREATE INDEX jobs_finished ON {s}.jobs (finished_at) WHERE finished_at IS NOT NULL;
        -- event seq: strictly increasing across every process attached to the schema
        CREATE SEQUENCE {s}.event_seq;
        """,
    ),
    (
        2,
        """
        -- the worker registry: one row per live worker, refreshed with its heartbeat
        CREATE TABLE {s}.workers (
            id text COLLATE "C" PRIMARY KEY,
            expires_at timestamptz NOT NULL,
            record jsonb NOT NULL
        );
        """,
    ),
    (
        3,
        # Webhooks and their durable outbox (see postgres/webhooks.py). The trigger writes
        # the outbox rows in the transaction that ends the job, whichever statement ends
        # it (a finish batch, a cancel, a lease expiry).
        """
        CREATE TABLE {s}.webhooks (
            id text PRIMARY KEY,
            url text NOT NULL,
            events text[] NOT NULL,
            secret text NOT NULL,
            created_at timestamptz NOT NULL
        );
        CREATE TABLE {s}.webhook_deliveries (
            id text PRIMARY KEY,  -- the webhook-id header, stable across retries
            webhook_id text NOT NULL,
            event text NOT NULL,
            job_id text NOT NULL,
            record jsonb NOT NULL,  -- the job at its end: the body of every retry
            at timestamptz NOT NULL,
            status text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            next_at timestamptz,
            last_error text,
            delivered_at timestamptz
        );
        CREATE INDEX webhook_deliveries_due ON {s}.webhook_deliveries (next_at)
            WHERE status = 'pending';
        CREATE INDEX webhook_deliveries_hook ON {s}.webhook_deliveries (webhook_id, at);
        CREATE FUNCTION {s}.jobs_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO {s}.webhook_deliveries
                (id, webhook_id, event, job_id, record, at, status, next_at)
            SELECT 'msg_' || NEW.id || '_'
                       || jsonb_array_length(COALESCE(NEW.record->'history', '[]'::jsonb))
                       || '_' || w.id,
                   w.id, 'job_' || NEW.status, NEW.id, NEW.record,
                   COALESCE(NEW.finished_at, NEW.run_at), 'pending',
                   COALESCE(NEW.finished_at, NEW.run_at)
            FROM {s}.webhooks AS w
            WHERE ('job_' || NEW.status) = ANY(w.events)
            ON CONFLICT (id) DO NOTHING;
            RETURN NULL;
        END $$;
        CREATE TRIGGER jobs_webhook_outbox AFTER UPDATE OF status ON {s}.jobs
            FOR EACH ROW
            WHEN (NEW.status IN ('completed', 'failed', 'cancelled')
                  AND OLD.status IS DISTINCT FROM NEW.status)
            EXECUTE FUNCTION {s}.jobs_webhook_outbox();
        """,
    ),
    (
        4,
        # Idempotency keys are unique per owner (a NULL owner is one owner of its own).
        """
        CREATE UNIQUE INDEX jobs_owner_idempotency_key
            ON {s}.jobs ((coalesce(owner, '')), (owner IS NULL), idempotency_key)
            WHERE idempotency_key IS NOT NULL;
        DROP INDEX {s}.jobs_idempotency_key;
        """,
    ),
)


def check_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a plain identifier short enough for a NOTIFY channel."""
    if not _SCHEMA_NAME.match(schema):
        raise ConfigurationError(
            f"invalid PostgreSQL schema name {schema!r}: use letters, digits and "
            "underscores, starting with a letter or underscore, at most 48 characters"
        )
    return schema


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_not_newer(schema: str, done: set[int], newest: int) -> None:
    if done and max(done) > newest:
        raise ConfigurationError(
            f"schema {schema!r} is at migration {max(done)}, newer than this asyncjobs "
            f"knows ({newest}); upgrade asyncjobs in this process"
        )


async def apply_migrations(conn: asyncpg.Connection[Any], schema: str) -> list[int]:
    """Bring ``schema`` up to the newest migration; return the versions applied now.

    Raises:
        ConfigurationError: the schema was migrated by a newer asyncjobs than this one.
    """
    s = quote_ident(check_schema_name(schema))
    newest = MIGRATIONS[-1][0]
    # Fast path, and the only one an application role without CREATE privileges takes:
    # an up-to-date schema needs no lock and no DDL.
    if await conn.fetchval("SELECT to_regclass($1)", f"{s}.schema_migrations") is not None:
        done = {row[0] for row in await conn.fetch(f"SELECT version FROM {s}.schema_migrations")}
        if done >= {version for version, _ in MIGRATIONS}:
            _check_not_newer(schema, done, newest)
            return []
    applied: list[int] = []
    async with conn.transaction():
        # Held until commit: concurrent open() calls queue up here, and the second one
        # finds every migration recorded by the first.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            f"asyncjobs:migrate:{schema}",
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in await conn.fetch(f"SELECT version FROM {s}.schema_migrations")}
        _check_not_newer(schema, done, newest)
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql.format(s=s))
            await conn.execute(f"INSERT INTO {s}.schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
    return applied


def import_asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "the PostgreSQL store needs asyncpg: pip install 'asyncjobs[postgres]'"
        ) from None
    return asyncpg


def split_url(url: str) -> tuple[str, str | None]:
    """Return ``(dsn, schema)``: the ``?schema=`` parameter taken out of the URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigurationError(
            f"not a PostgreSQL URL: {url!r}; use postgresql://user:password@host:5432/db"
        )
    schema = None
    rest = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


def redact(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def migrate(dsn: str, schema: str | None = None) -> list[int]:
    """Create or upgrade the asyncjobs tables in ``schema``; return the versions applied.

    Safe to run while other processes use the schema, and from many processes at once.
    ``PostgresStore.open()`` does the same, so calling this is only needed to migrate
    ahead of a deployment (``asyncjobs migrate``).

    Args:
        dsn: A ``postgresql://`` URL; a ``?schema=`` parameter names the schema.
        schema: The schema; overrides the URL's, default ``asyncjobs``.
    """
    dsn, url_schema = split_url(dsn)
    conn = await import_asyncpg().connect(dsn)
    try:
        return await apply_migrations(conn, schema or url_schema or "asyncjobs")
    finally:
        await conn.close()
