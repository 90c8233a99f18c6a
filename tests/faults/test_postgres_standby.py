"""PostgreSQL: a libpq multi-host URL with ``target_session_attrs=read-write``.

A throwaway primary and a streaming standby (``pg_basebackup -R``). powerq's
``POWERQ_DATABASE_URL`` lists the standby first and the primary second:
libpq (through psycopg and SQLAlchemy) tries the standby, finds its session
read-only, refuses it and goes on to the primary. With the standby alone in
the URL, nothing is connected and the API answers 503. After the operator
promotes the standby (powerq never does: see docs/high-availability.md), the
same URL finds the new primary and writes go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from powerq.api import create_app
from powerq.config import get_settings
from powerq.db import reset_engines, run_statement, session_scope
from powerq.migrate import upgrade
from powerq.models import ApiToken
from powerq.tokens import create_token
from tests.api.helpers import assert_problem
from tests.faults.pgpair import PrimaryStandby, ThrowawayServer

pytestmark = [pytest.mark.faults, pytest.mark.slow]

UseDatabase = Callable[[str], None]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[PrimaryStandby]:
    """A primary with powerq's schema, and a standby that replays it."""
    servers = PrimaryStandby(tmp_path / "pg")
    try:
        servers.start()
        upgrade(servers.url(servers.primary))
        # the standby replays asynchronously: wait until it has the schema too
        servers.wait_replayed("SELECT to_regclass('api_tokens') IS NOT NULL")
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def use_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[UseDatabase]:
    """``use_database(url)`` points this process's settings and engines at ``url``."""

    def use(url: str) -> None:
        monkeypatch.setenv("POWERQ_DATABASE_URL", url)
        get_settings.cache_clear()
        reset_engines()

    yield use
    monkeypatch.undo()
    get_settings.cache_clear()
    reset_engines()


def _serving() -> tuple[int, bool]:
    """The port of the server powerq's engine is connected to, and whether it is a
    standby (through :func:`powerq.db.run_statement`, which replaces a pooled
    connection found dead and tries once more, as the lane workers do)."""
    row = run_statement(text("SELECT inet_server_port(), pg_is_in_recovery()"))
    assert row is not None
    port, standby = tuple(row)
    return int(port), bool(standby)


def _write_token(name: str) -> None:
    """A write through powerq's own session and model."""
    with session_scope() as session:
        create_token(session, role="reader", name=name)


def _tokens_named(server: ThrowawayServer, name: str) -> int:
    with server.connect() as conn:
        row = conn.execute("SELECT count(*) FROM api_tokens WHERE name = %s", (name,)).fetchone()
        return int(row[0]) if row else 0


def test_a_standby_listed_first_is_refused_and_the_primary_is_used(
    pair: PrimaryStandby, use_database: UseDatabase
) -> None:
    url = pair.url(pair.standby, pair.primary)
    assert url.index(f"host={pair.standby.hostport}") < url.index(pair.primary.hostport)
    use_database(url)

    assert _serving() == (pair.primary.port, False)
    _write_token("through-multi-host")
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(ApiToken)) == 1
    # written on the primary, replayed by the standby
    assert _tokens_named(pair.primary, "through-multi-host") == 1
    pair.wait_replayed("SELECT count(*) FROM api_tokens WHERE name = 'through-multi-host'")


def test_without_target_session_attrs_the_standby_listed_first_is_used(
    pair: PrimaryStandby, use_database: UseDatabase
) -> None:
    """What the setting is for: without it libpq takes the first server that answers."""
    use_database(pair.url(pair.standby, pair.primary, read_write=False))
    assert _serving() == (pair.standby.port, True)
    # an InternalError, not an OperationalError: the API would answer 500, not 503
    with pytest.raises(DBAPIError, match="read-only transaction"):
        _write_token("on-the-standby")


def test_only_a_standby_is_refused_with_a_clear_error_and_the_api_answers_503(
    pair: PrimaryStandby, use_database: UseDatabase
) -> None:
    use_database(pair.url(pair.standby))

    with pytest.raises(OperationalError, match="session is read-only"):
        _serving()
    client = create_app().test_client()
    health = client.get("/healthz")
    assert_problem(health, 503)
    response = client.post(
        "/v1/nodes/node-1/power",
        json={"action": "on"},
        headers={"Authorization": "Bearer pq_anything"},
    )
    body = assert_problem(response, 503)
    assert int(response.headers["Retry-After"]) > 0
    assert "database" in body["detail"]


def test_writes_go_on_after_the_operator_promotes_the_standby(
    pair: PrimaryStandby, use_database: UseDatabase
) -> None:
    use_database(pair.url(pair.standby, pair.primary))
    _write_token("before")
    assert _serving() == (pair.primary.port, False)
    pair.wait_replayed("SELECT count(*) FROM api_tokens WHERE name = 'before'")

    pair.primary.stop()
    # powerq does not fail over by itself: the primary is gone, the standby refused
    with pytest.raises(OperationalError, match="session is read-only"):
        _serving()

    pair.promote_standby()
    assert _serving() == (pair.standby.port, False)
    _write_token("after")
    assert _tokens_named(pair.standby, "before") == 1
    assert _tokens_named(pair.standby, "after") == 1
