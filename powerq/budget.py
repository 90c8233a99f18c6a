"""The PostgreSQL connection budget: how many connections a deployment can open at most.

Every process that talks to PostgreSQL has one pool per database URL
(:func:`powerq.db.engine_for`) that never holds more than its size plus
``POWERQ_DB_MAX_OVERFLOW`` connections; a caller beyond that waits
``POWERQ_DB_POOL_TIMEOUT_S`` and gets an error (the API: 503 with
``Retry-After``). So the most a deployment can hold is a sum over its
processes, computed here from the settings, not measured.

With the defaults (8 lanes, pool 3 + overflow 3, 8 API threads) a default
``powerq up`` (1 API worker) holds at most 68 connections, and the Procfile
(2 API workers) at most 78: both under :data:`CEILING`, which
leaves PostgreSQL's default ``max_connections`` = 100 room for its
superuser-reserved slots, ``psql``, backups and one-off ``powerq`` commands.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from powerq.config import Settings
from powerq.db import connections_per_process

POSTGRES_DEFAULT_MAX_CONNECTIONS = 100
# What a default deployment (`powerq up`, or the Procfile) stays at or under.
CEILING = 80
# gunicorn worker processes: `powerq up --api-workers` default, the Procfile's
# ${POWERQ_WEB_WORKERS:-2}.
UP_API_WORKERS = 1
PROCFILE_API_WORKERS = 2
# Short-lived processes that connect once at a time: migrations (NullPool, one
# connection) and `powerq up` registering the fleet and the admin token before
# it forks the workers (its pool is emptied then).
MIGRATION_CONNECTIONS = 1
SUPERVISOR_CONNECTIONS = 1
# `powerq agent` runs one statement at a time (its heartbeat), so holds one.
AGENT_CONNECTIONS = 1
# Slots PostgreSQL keeps from ordinary roles (reserved_connections is 16+).
_RESERVED_SETTINGS = ("superuser_reserved_connections", "reserved_connections")


@dataclass(frozen=True)
class Budget:
    """The most connections each kind of process holds, and how many of each run."""

    per_lane: int
    lanes: int
    per_control: int  # the control worker (sweeper, monitor, batch pump; beat as a thread)
    per_api_worker: int
    api_workers: int
    migrations: int = MIGRATION_CONNECTIONS
    supervisor: int = 0  # `powerq up` itself, during start-up only
    agent: int = AGENT_CONNECTIONS  # the host's `powerq agent` (one per host)

    @property
    def total(self) -> int:
        """Every process at its peak at once (a bound: start-up ones never overlap the rest)."""
        return (
            self.per_lane * self.lanes
            + self.per_control
            + self.per_api_worker * self.api_workers
            + self.migrations
            + self.supervisor
            + self.agent
        )


def budget(settings: Settings, api_workers: int, *, supervisor: bool) -> Budget:
    """The connection budget of a deployment with ``settings`` and ``api_workers``
    gunicorn processes (each with ``POWERQ_API_THREADS`` threads); ``supervisor``:
    run by ``powerq up`` (which connects briefly itself). Beat, Flower and the
    simulated fleet never connect to PostgreSQL."""
    per_process = connections_per_process(settings)
    return Budget(
        per_lane=per_process,
        lanes=settings.lanes,
        per_control=per_process,
        per_api_worker=connections_per_process(settings, settings.api_threads),
        api_workers=api_workers,
        supervisor=SUPERVISOR_CONNECTIONS if supervisor else 0,
    )


def up_budget(settings: Settings) -> Budget:
    """The budget of ``powerq up`` with its default number of API workers."""
    return budget(settings, UP_API_WORKERS, supervisor=True)


def procfile_budget(settings: Settings) -> Budget:
    """The budget of the Procfile's processes with their default API workers."""
    return budget(settings, PROCFILE_API_WORKERS, supervisor=False)


def server_room(connection: Connection) -> int:
    """How many connections the PostgreSQL server behind ``connection`` lets
    ordinary roles open: ``max_connections`` less its reserved slots.

    :raises sqlalchemy.exc.DBAPIError: the server could not be asked.
    """
    rows = connection.execute(
        text(
            "SELECT name, setting::int FROM pg_settings"
            " WHERE name = 'max_connections' OR name = ANY(:reserved)"
        ),
        {"reserved": list(_RESERVED_SETTINGS)},
    )
    settings: dict[str, int] = {name: value for name, value in rows}
    reserved = sum(settings.get(name, 0) for name in _RESERVED_SETTINGS)
    return settings["max_connections"] - reserved


def over_budget_warning(planned: Budget, room: int) -> str | None:
    """One line saying that ``planned`` can open more connections than the server
    has ``room`` for, and what to change; None when it fits."""
    if planned.total <= room:
        return None
    return (
        f"this stack may open up to {planned.total} PostgreSQL connections, but the server "
        f"allows {room} (max_connections less reserved slots): lower POWERQ_DB_POOL_SIZE, "
        "POWERQ_DB_MAX_OVERFLOW, POWERQ_API_THREADS or POWERQ_LANES, or raise max_connections"
    )
