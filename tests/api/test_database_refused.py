"""When PostgreSQL refuses or cannot give a connection, the API answers 503
problem+json with ``Retry-After`` and has recorded nothing; once the database
answers again the same call is accepted. Real PostgreSQL: a port nobody listens
on, a role PostgreSQL refuses ("too many connections"), and a pool of one
connection held by someone else."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from powerq import db
from powerq.api import create_app
from powerq.config import get_settings
from powerq.models import Node, PowerRequest
from tests.api.helpers import assert_problem, counts
from tests.factories import make_node

POWER = "/v1/nodes/node-1/power"
REFUSED_ROLE = "powerq_refused"


@pytest.fixture
def node(session: Session) -> Node:
    return make_node(session, "node-1")


class Database:
    """Points the process's settings (and so :func:`powerq.db.get_engine`) at a URL."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.urls: list[str] = []

    def use(self, url: str, **env: str) -> None:
        self.monkeypatch.setenv("POWERQ_DATABASE_URL", url)
        for name, value in env.items():
            self.monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        self.urls.append(url)

    def restore(self) -> None:
        self.monkeypatch.undo()
        get_settings.cache_clear()
        for url in self.urls:
            engine = db._engines.pop(url, None)
            if engine is not None:
                engine.dispose()
        self.urls.clear()


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    kept = db._kept_connections
    switch = Database(monkeypatch)
    yield switch
    switch.restore()
    db.keep_connections_for(kept)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def refused_role(services: Any) -> Iterator[str]:
    """A database URL whose role PostgreSQL refuses at connect (connection limit 0)."""
    admin = create_engine(services.admin_pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(text(f"DROP ROLE IF EXISTS {REFUSED_ROLE}"))
        conn.execute(text(f"CREATE ROLE {REFUSED_ROLE} LOGIN CONNECTION LIMIT 0"))
    url = make_url(get_settings().database_url or "").set(username=REFUSED_ROLE)
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(text(f"DROP ROLE IF EXISTS {REFUSED_ROLE}"))
    admin.dispose()


def assert_unavailable(response: Any) -> None:
    body = assert_problem(response, 503)
    assert int(response.headers["Retry-After"]) > 0
    assert "Traceback" not in body["detail"]


def test_a_server_that_refuses_tcp_is_503_and_nothing_is_recorded(
    client: FlaskClient,
    operator: dict[str, str],
    node: Node,
    session: Session,
    database: Database,
) -> None:
    before = counts(session)
    assert client.get(POWER, headers=operator).status_code == 200  # token believed for 5 s
    database.use(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/powerq")

    assert_unavailable(client.post(POWER, json={"action": "on"}, headers=operator))
    assert_unavailable(client.get("/v1/nodes", headers={"Authorization": "Bearer unknown"}))

    database.restore()
    assert counts(session) == before
    assert client.post(POWER, json={"action": "on"}, headers=operator).status_code == 202


def test_too_many_connections_is_503(
    client: FlaskClient,
    operator: dict[str, str],
    node: Node,
    session: Session,
    database: Database,
    refused_role: str,
) -> None:
    before = counts(session)
    assert client.get(POWER, headers=operator).status_code == 200
    database.use(refused_role)

    with pytest.raises(OperationalError, match="too many connections"):
        db.get_engine().connect().close()
    assert_unavailable(client.post(POWER, json={"action": "off"}, headers=operator))

    database.restore()
    assert counts(session) == before


def test_an_exhausted_pool_is_503_within_the_pool_timeout(
    operator: dict[str, str], node: Node, session: Session, database: Database
) -> None:
    url = make_url(get_settings().database_url or "").update_query_dict(
        {"application_name": "powerq-pool-of-one"}
    )
    database.use(
        url.render_as_string(hide_password=False),
        POWERQ_DB_POOL_SIZE="1",
        POWERQ_DB_MAX_OVERFLOW="0",
        POWERQ_DB_POOL_TIMEOUT_S="0.3",
        POWERQ_API_THREADS="1",
    )
    client = _client(create_app())
    before = counts(session)
    assert client.get(POWER, headers=operator).status_code == 200

    with db.get_engine().connect():  # the pool's only connection, held
        assert_unavailable(client.post(POWER, json={"action": "on"}, headers=operator))
    assert counts(session) == before

    response = client.post(POWER, json={"action": "on"}, headers=operator)
    assert response.status_code == 202
    assert session.get(PowerRequest, response.get_json()["request"]["id"]) is not None


def test_a_database_failure_after_the_commit_is_not_a_503(
    client: FlaskClient,
    operator: dict[str, str],
    node: Node,
    session: Session,
    dead_broker: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The intent committed, then the lane could not be rung and taking the
    dispatch mark back failed too: still accepted (the sweeper finds it)."""

    @contextlib.contextmanager
    def unreachable() -> Iterator[Session]:
        raise OperationalError("UPDATE", {}, ConnectionRefusedError("refused"))
        yield  # pragma: no cover

    monkeypatch.setattr("powerq.tasks.dispatch.session_scope", unreachable)
    response = client.post(POWER, json={"action": "on"}, headers=operator)

    assert response.status_code == 202
    assert session.get(PowerRequest, response.get_json()["request"]["id"]) is not None


def _client(app: APIFlask) -> FlaskClient:
    app.testing = True
    return app.test_client()
