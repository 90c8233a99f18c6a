"""Migrations go up, down to base and up again on an empty database."""

from __future__ import annotations

import uuid

import psycopg

from powerq.migrate import downgrade, upgrade
from tests.services import SuiteServices, create_database, drop_database, with_database

TABLES = {"nodes", "power_requests", "power_events", "batches", "api_tokens"}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def _partial_index_definition(url: str) -> str:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_power_requests_one_outstanding'"
        ).fetchone()
    return row[0] if row else ""


def test_up_down_up_on_an_empty_database(services: SuiteServices) -> None:
    name = f"powerq_mig_{uuid.uuid4().hex[:8]}"
    create_database(services.admin_pg_url, name)
    url = with_database(services.admin_pg_url, name)
    try:
        upgrade(url)
        assert _tables(url) >= TABLES
        assert "UNIQUE" in _partial_index_definition(url)
        assert "WHERE" in _partial_index_definition(url)

        downgrade(url, "base")
        assert _tables(url) == {"alembic_version"}

        upgrade(url)
        assert _tables(url) >= TABLES
    finally:
        drop_database(services.admin_pg_url, name)


def test_models_and_migrations_agree(services: SuiteServices) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from powerq.db import Base

    engine = create_engine(services.database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], "models changed without a migration"
