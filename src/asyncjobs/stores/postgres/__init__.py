"""The PostgreSQL store: many processes on many machines (asyncpg; ``asyncjobs[postgres]``)."""

from .store import PostgresStore, migrate

__all__ = ["PostgresStore", "migrate"]
