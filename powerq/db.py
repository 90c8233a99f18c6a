"""Engine, session factory and declarative base (SQLAlchemy 2.x).

Transactions are short by rule: open one with :func:`session_scope`, do the
database work, leave. Never hold one across a BMC call.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Executable, MetaData, Row, create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from powerq.config import Settings, get_settings, sqlalchemy_url
from powerq.errors import ConfigError

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a stable constraint naming convention (for Alembic)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (all timestamps are ``timestamptz``)."""
    return datetime.now(UTC)


_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
# At least this many pooled connections kept per engine (see keep_connections_for).
_kept_connections = 0


def keep_connections_for(threads: int) -> None:
    """Keep at least ``threads`` pooled connections in the engines this process
    creates from now on: a process serving requests on that many threads (the
    API) then never opens and closes a connection per request, as SQLAlchemy
    does with an overflow connection at every check-in. Engines already created
    keep their pool."""
    global _kept_connections
    _kept_connections = threads


def pool_size(settings: Settings, threads: int = 0) -> int:
    """Connections a process keeps pooled: ``POWERQ_DB_POOL_SIZE``, or ``threads``
    (the API's serving threads) if more."""
    return max(settings.db_pool_size, threads)


def connections_per_process(settings: Settings, threads: int = 0) -> int:
    """The most PostgreSQL connections one process can hold: its pool plus
    ``POWERQ_DB_MAX_OVERFLOW`` (the pool refuses more; see :mod:`powerq.budget`)."""
    return pool_size(settings, threads) + settings.db_max_overflow


def engine_for(url: str) -> Engine:
    """One pooled engine per URL per process (``POWERQ_DB_POOL_SIZE``, or the
    threads given to :func:`keep_connections_for` if more, and
    ``POWERQ_DB_MAX_OVERFLOW`` connections; a caller waits at most
    ``POWERQ_DB_POOL_TIMEOUT_S`` for one, then gets
    :class:`sqlalchemy.exc.TimeoutError`).

    No pre-ping on every checkout: it would cost a round trip per transaction.
    Only a connection that sat idle for :data:`IDLE_PING_S` is pinged when it
    is taken (:func:`_ping_when_idle`), so one that died with a PostgreSQL
    restart is replaced before use. One used within that second before the
    restart fails once; SQLAlchemy then replaces the whole pool, and
    :func:`run_statement` (the executor's hot path) retries that statement.
    """
    if url not in _engines:
        settings = get_settings()
        engine = create_engine(
            sqlalchemy_url(url),
            pool_size=pool_size(settings, _kept_connections),
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_s,
            connect_args=connect_args(settings.db_statement_timeout_s),
        )
        _ping_when_idle(engine)
        _engines[url] = engine
    return _engines[url]


CONNECT_TIMEOUT_S = 5


def connect_args(statement_timeout_s: float) -> dict[str, Any]:
    """psycopg connect arguments: a bounded connect, and PostgreSQL's
    ``statement_timeout`` set per session (the bound on every statement a lane
    worker's threads run: Celery's time limits do not apply to a thread pool)."""
    args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S}
    if statement_timeout_s > 0:
        args["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    return args


# A pooled connection idle this long is pinged before use; busier ones are not.
IDLE_PING_S = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Make ``engine``'s pool ping a connection that sat idle before handing it out."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def note_idle(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        """:raises DisconnectionError: the connection is dead (the pool discards it
        and checks out a fresh one)."""
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_S:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise DisconnectionError(str(exc)) from exc
            raise


def get_engine() -> Engine:
    """The engine for ``POWERQ_DATABASE_URL``.

    :raises ConfigError: no database URL is configured (start services first).
    """
    url = get_settings().database_url
    if not url:
        raise ConfigError(
            "POWERQ_DATABASE_URL is not set: run `powerq up`, or set it to a PostgreSQL URL"
        )
    return engine_for(url)


def session_factory() -> sessionmaker[Session]:
    """The session factory bound to the configured engine.

    :raises ConfigError: no database URL is configured.
    """
    engine = get_engine()
    url = str(engine.url)
    if url not in _factories:
        _factories[url] = sessionmaker(bind=engine, expire_on_commit=False)
    return _factories[url]


def db_now(session: Session) -> datetime:
    """PostgreSQL's clock (transaction time): leases and deadlines all use it."""
    now: datetime = session.execute(select(func.now())).scalar_one()
    return now


@contextlib.contextmanager
def session_scope() -> Iterator[Session]:
    """One short transaction: commits on success, rolls back on any exception.

    :raises ConfigError: no database URL is configured.
    """
    with session_factory()() as session, session.begin():
        yield session


def run_statement(
    statement: Executable, params: Mapping[str, Any] | None = None
) -> Row[Any] | None:
    """Run one statement as its own transaction and return its first row.

    One round trip: the statement runs in autocommit mode, which for a single
    statement is the same transaction without the BEGIN and COMMIT round trips.
    A connection found dead (PostgreSQL restarted since it was pooled) is
    replaced and the statement retried once. Callers' statements are fenced
    or conditional, so one that ran before its connection broke changes
    nothing more the second time.

    :raises sqlalchemy.exc.DBAPIError: the database refused or is unreachable.
    :raises ConfigError: no database URL is configured.
    """
    for retry in (False, True):
        try:
            with _autocommit(get_engine()).connect() as conn:
                return conn.execute(statement, params or {}).first()
        except DBAPIError as exc:
            if retry or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


_autocommit_engines: dict[int, Engine] = {}


def _autocommit(engine: Engine) -> Engine:
    """``engine`` in autocommit mode (same pool)."""
    key = id(engine)
    if key not in _autocommit_engines:
        _autocommit_engines[key] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return _autocommit_engines[key]


def _forget_after_fork() -> None:
    """In a child just forked: forget the parent's pooled connections without
    closing them (they share the parent's sockets; closing would end its
    sessions, using them would interleave two conversations on one)."""
    reset_engines(close=False)


os.register_at_fork(after_in_child=_forget_after_fork)


def reset_engines(*, close: bool = True) -> None:
    """Dispose and forget every engine (tests that switch databases, forked workers).

    ``close=False`` in a process just forked from one that keeps using its
    connections: they are forgotten here, not closed (closing would end the
    parent's sessions, which share the sockets)."""
    for engine in _engines.values():
        engine.dispose(close=close)
    _engines.clear()
    _autocommit_engines.clear()
    _factories.clear()
