"""Fixtures for the API tests: the app, a test client, and one token per role."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from powerq.api import create_app
from powerq.tokens import ROLES, create_token, token_cache


@pytest.fixture
def app(db: None) -> APIFlask:
    """The API on the suite's database and broker."""
    app = create_app()
    app.testing = True
    return app


@pytest.fixture
def client(app: APIFlask) -> FlaskClient:
    """Flask's test client for :func:`app`."""
    return app.test_client()


@pytest.fixture
def headers(session: Session) -> dict[str, dict[str, str]]:
    """``Authorization`` headers by role (tokens named after their role)."""
    result = {}
    for role in ROLES:
        _, plaintext = create_token(session, role=role, name=f"{role}-token")
        result[role] = {"Authorization": f"Bearer {plaintext}"}
    session.commit()
    return result


@pytest.fixture
def admin(headers: dict[str, dict[str, str]]) -> dict[str, str]:
    """Headers of an admin token."""
    return headers["admin"]


@pytest.fixture
def operator(headers: dict[str, dict[str, str]]) -> dict[str, str]:
    """Headers of an operator token."""
    return headers["operator"]


@pytest.fixture
def reader(headers: dict[str, dict[str, str]]) -> dict[str, str]:
    """Headers of a reader token."""
    return headers["reader"]


@pytest.fixture
def fresh_session(db: None) -> Iterator[Session]:
    """A second session for reading what the API committed."""
    from powerq.db import session_factory

    with session_factory()() as s:
        yield s


def point_broker_at(url: str) -> None:
    """Point the Celery app (and so send_step) at the broker ``url``."""
    # Only drop the app's references: kombu keeps one pool per URL process-wide,
    # so closing it would break the real broker's pool once it is restored.
    from powerq.tasks.app import app as celery_app

    celery_app.conf.broker_url = url
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture
def dead_broker() -> Iterator[None]:
    """The Celery app pointed at a port nobody listens on; restored afterwards."""
    from powerq.tasks.app import app as celery_app

    original = celery_app.conf.broker_url
    point_broker_at("redis://127.0.0.1:1/0")
    try:
        yield
    finally:
        point_broker_at(original)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """The token cache on a fake clock, empty before and after."""
    fake = FakeClock()
    monkeypatch.setattr(token_cache, "clock", fake)
    token_cache.clear()
    yield fake
    token_cache.clear()
