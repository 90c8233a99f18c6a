"""The API keeps one PostgreSQL connection per serving thread: with fewer, SQLAlchemy
closed an overflow connection at every check-in, and a busy API opened a new
PostgreSQL backend for most requests (BENCHMARKS.md, benchmark 3)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.pool import QueuePool

from powerq import db
from powerq.api import create_app
from powerq.config import get_settings

# Never connected to: create_engine opens nothing until used.
_URL = "postgresql+psycopg://nobody@127.0.0.1:1/pool_size_test"


@pytest.fixture
def fresh_engines() -> Iterator[None]:
    kept = db._kept_connections
    yield
    engine = db._engines.pop(_URL, None)
    if engine is not None:
        engine.dispose()
    db.keep_connections_for(kept)


def _pool_size() -> int:
    pool = db.engine_for(_URL).pool
    assert isinstance(pool, QueuePool)
    return pool.size()


def test_the_api_keeps_a_connection_per_thread(fresh_engines: None) -> None:
    settings = get_settings().model_copy(update={"api_threads": 11})

    create_app(settings)

    assert _pool_size() == 11


def test_a_pool_setting_above_the_threads_still_counts(fresh_engines: None) -> None:
    db.keep_connections_for(1)

    assert _pool_size() == get_settings().db_pool_size
