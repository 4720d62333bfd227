"""Chaos tests: kill -9 of worker processes and a PostgreSQL restart under load."""
