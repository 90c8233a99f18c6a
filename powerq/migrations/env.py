"""Alembic environment: migrations run against the configured PostgreSQL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

from powerq import models  # noqa: F401  (registers the tables on Base.metadata)
from powerq.config import sqlalchemy_url
from powerq.db import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Apply migrations on one connection, in one transaction."""
    given: Connection | None = context.config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = sqlalchemy_url(context.config.get_main_option("sqlalchemy.url") or "")
    with create_engine(url, poolclass=pool.NullPool).connect() as connection:
        _run(connection)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
