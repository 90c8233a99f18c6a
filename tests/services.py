"""Real PostgreSQL and Redis for the test suite.

The machine's own services are used when they answer (PostgreSQL on
127.0.0.1:5432 as ``postgres``, Redis on 127.0.0.1:6379); otherwise embedded
ones are started from wheels. Each test session gets a fresh database.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

SYSTEM_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
SYSTEM_REDIS = ("127.0.0.1", 6379)
# Concurrent test sessions on one machine each flush "their" Redis database:
# spread them over databases 1-15 so one session does not eat the other's messages.
TEST_REDIS_DB = 1 + os.getpid() % 15


@dataclass
class SuiteServices:
    """URLs the suite runs against, and embedded handles to stop at the end."""

    admin_pg_url: str
    database_url: str
    broker_url: str
    database_name: str
    handles: list[Any] = field(default_factory=list)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _system_pg_usable() -> bool:
    if not _port_open("127.0.0.1", 5432):
        return False
    try:
        with psycopg.connect(SYSTEM_PG, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _admin_postgres(data_dir: Path, handles: list[Any]) -> str:
    if os.environ.get("POWERQ_TEST_EMBEDDED") != "1" and _system_pg_usable():
        return SYSTEM_PG
    from powerq.services import start_embedded_postgres

    url, handle = start_embedded_postgres(data_dir)
    handles.append(handle)
    return url.replace("postgresql+psycopg://", "postgresql://").replace("/powerq?", "/postgres?")


def _broker(data_dir: Path, handles: list[Any]) -> str:
    if os.environ.get("POWERQ_TEST_EMBEDDED") != "1" and _port_open(*SYSTEM_REDIS):
        return f"redis://{SYSTEM_REDIS[0]}:{SYSTEM_REDIS[1]}/{TEST_REDIS_DB}"
    from powerq.services import start_embedded_redis

    url, handle = start_embedded_redis(data_dir, port=0)
    handles.append(handle)
    return url


def with_database(admin_url: str, name: str) -> str:
    """``admin_url`` pointing at database ``name`` (keeps a ``?host=`` socket part)."""
    base, _, query = admin_url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


def create_database(admin_url: str, name: str) -> None:
    """Create an empty database ``name``."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name`` even with connections left open."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start(data_dir: Path) -> SuiteServices:
    """Find or start PostgreSQL and Redis and create this session's database."""
    handles: list[Any] = []
    admin = _admin_postgres(data_dir / "embedded", handles)
    name = f"powerq_test_{uuid.uuid4().hex[:10]}"
    create_database(admin, name)
    database_url = with_database(admin, name).replace("postgresql://", "postgresql+psycopg://", 1)
    return SuiteServices(
        admin, database_url, _broker(data_dir / "embedded", handles), name, handles
    )
