"""Suite-wide fixtures: a real PostgreSQL database and a real Redis for every test run."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests import services as test_services

_SERVICES: test_services.SuiteServices | None = None
_DATA_DIR = Path(tempfile.mkdtemp(prefix="powerq-test-"))


def _is_xdist_controller(config: pytest.Config) -> bool:
    """Whether this process only hands tests to pytest-xdist workers (``-n N``)."""
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    """Start services and export their URLs before any powerq module reads settings,
    so worker subprocesses started by tests inherit the same environment. Each
    pytest-xdist worker has its own database and Redis databases; the controller
    that hands them tests needs none."""
    global _SERVICES
    if _is_xdist_controller(config):
        return
    _SERVICES = test_services.start(_DATA_DIR)
    os.environ.update(
        POWERQ_DATABASE_URL=_SERVICES.database_url,
        POWERQ_BROKER_URL=_SERVICES.broker_url,
        POWERQ_DATA_DIR=str(_DATA_DIR / "data"),
        POWERQ_SECRET_KEY=Fernet.generate_key().decode(),
        # Two lanes: enough to show lane isolation and sharing on a 2-core machine.
        POWERQ_LANES="2",
        # The in-process fake BMC driver is accepted only where enabled explicitly.
        POWERQ_DRIVERS="ipmi,sim",
    )
    from powerq.migrate import upgrade

    upgrade(_SERVICES.database_url)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop the session's database and stop anything embedded."""
    if _SERVICES is None:
        return
    from powerq.db import reset_engines
    from powerq.services import stop_embedded

    reset_engines()
    test_services.drop_database(_SERVICES.admin_pg_url, _SERVICES.database_name)
    test_services.release_redis_databases()
    stop_embedded(_SERVICES.handles)


@pytest.fixture(scope="session")
def services() -> test_services.SuiteServices:
    """The PostgreSQL and Redis this run uses."""
    assert _SERVICES is not None
    return _SERVICES


TABLES = (
    "power_events, power_requests, batches, nodes, api_tokens, idempotent_responses,"
    " agents, lane_leases"
)


@pytest.fixture
def db(services: test_services.SuiteServices) -> Iterator[None]:
    """An empty schema and an empty broker for this test (truncate before, not after,
    so a failing test leaves its rows to look at)."""
    from sqlalchemy.exc import OperationalError

    from powerq.db import get_engine

    # Lane workers of a module-scoped stack may still be finishing a step: a
    # deadlock with their transaction is retried, not a test failure.
    for attempt in range(5):
        try:
            with get_engine().begin() as conn:
                conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
            break
        except OperationalError:
            if attempt == 4:
                raise
    redis.Redis.from_url(services.broker_url).flushdb()
    yield


@pytest.fixture
def session(db: None) -> Iterator[Session]:
    """A session for arranging and inspecting rows (commit explicitly)."""
    from powerq.db import session_factory

    with session_factory()() as s:
        yield s
