"""Real PostgreSQL and Redis for the test suite.

The machine's own services are used when they answer (PostgreSQL on
127.0.0.1:5432 as ``postgres``, Redis on 127.0.0.1:6379); otherwise embedded
ones are started from wheels. Each test session gets a fresh database.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

SYSTEM_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
SYSTEM_REDIS = ("127.0.0.1", 6379)
# Test processes on one machine (pytest-xdist's workers, a developer's run beside
# CI) each flush "their" Redis databases: each claims its own among 1-15, so one
# does not eat another's messages. Claims are keys in database 0 holding the pid.
CLAIMABLE_REDIS_DBS = range(1, 16)
CLAIM_KEY = "powerq-test:redis-db:{}"
CLAIM_TTL_S = 6 * 3600


@dataclass
class SuiteServices:
    """URLs the suite runs against, and embedded handles to stop at the end."""

    admin_pg_url: str
    database_url: str
    broker_url: str
    database_name: str
    spare_broker_url: str
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_redis_databases(count: int) -> list[int]:
    """Claim ``count`` databases of the system Redis for this process: free ones,
    or ones whose claimant has exited.

    :raises RuntimeError: every database is claimed by a live process.
    """
    client = redis.Redis(*SYSTEM_REDIS, db=0)
    me = _claimant()
    claimed: list[int] = []
    for db in CLAIMABLE_REDIS_DBS:
        key = CLAIM_KEY.format(db)
        holder = client.get(key)
        if holder is None:
            if not client.set(key, me, ex=CLAIM_TTL_S, nx=True):
                continue  # another process claimed it just now
        elif _claimant_alive(holder.decode()):
            continue
        elif not client.eval(_TAKE_OVER, 1, key, holder, me, CLAIM_TTL_S):
            continue  # another process took it over first
        claimed.append(db)
        if len(claimed) == count:
            return claimed
    release_redis_databases()
    raise RuntimeError(f"no {count} free Redis databases among {CLAIMABLE_REDIS_DBS}")


# Take a claim over from an exited claimant only if it is still that one's: two
# processes seeing the same dead claimant must not both take it.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return false
"""


def _claimant() -> str:
    """This process, as a claim names it: host and pid (a pid means nothing on
    another host sharing the Redis)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _claimant_alive(claimant: str) -> bool:
    """Whether a claim's holder may still run (on another host: assume it does)."""
    host, _, pid = claimant.rpartition(":")
    if (host and host != socket.gethostname()) or not pid.isdigit():
        return True  # another host's process (a claim without a host is this host's)
    return _pid_alive(int(pid))


def release_redis_databases() -> None:
    """Give back the databases this process claimed."""
    with contextlib.suppress(redis.RedisError):
        client = redis.Redis(*SYSTEM_REDIS, db=0)
        me = _claimant().encode()
        for db in CLAIMABLE_REDIS_DBS:
            if client.get(CLAIM_KEY.format(db)) == me:
                client.delete(CLAIM_KEY.format(db))


def _brokers(data_dir: Path, handles: list[Any]) -> tuple[str, str]:
    """The broker URL of this run and a spare database on the same server."""
    if os.environ.get("POWERQ_TEST_EMBEDDED") != "1" and _port_open(*SYSTEM_REDIS):
        ours, spare = claim_redis_databases(2)
        base = f"redis://{SYSTEM_REDIS[0]}:{SYSTEM_REDIS[1]}"
        return f"{base}/{ours}", f"{base}/{spare}"
    from powerq.services import start_embedded_redis

    url, handle = start_embedded_redis(data_dir, port=0)
    handles.append(handle)
    return url, f"{url.rsplit('/', 1)[0]}/1"


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
    broker, spare = _brokers(data_dir / "embedded", handles)
    return SuiteServices(admin, database_url, broker, name, spare, handles)
