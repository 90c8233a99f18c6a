"""A full stack (lane workers, control worker, beat, sim fleet) on throwaway services.

Each fault test gets its own Redis (and, where it restarts PostgreSQL, its own
embedded PostgreSQL) so the machine's services are never disturbed. Periods
are short so recovery happens within a test: sweeps every second, re-dispatch
of unclaimed work after 3 s, monitor every 2 s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from powerq.bmc.simfleet.executions import beyond_budget
from powerq.bmc.simfleet.launcher import SimFleetProcess
from powerq.broker import sentinel_transport_options
from powerq.config import get_settings
from powerq.db import reset_engines, session_scope
from powerq.migrate import upgrade
from powerq.models import Node, PowerRequest
from powerq.states import FINISHED_STATUSES
from powerq.tasks.app import app
from tests.faults.services import ThrowawayPostgres, ThrowawayRedis
from tests.stack import Stack

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.ipmi]

FAST_PERIODS = {
    "POWERQ_SWEEP_INTERVAL_S": "1",
    "POWERQ_REDISPATCH_AFTER_S": "3",
    "POWERQ_MONITOR_INTERVAL_S": "2",
    "POWERQ_FAULT_RECHECK_S": "2",
    # the shortest lease the settings allow (above the control worker's time limit):
    # a request whose worker vanished is taken over after it
    "POWERQ_LEASE_S": "31",
}


def use_broker(url: str) -> None:
    """Point this process's Celery app at ``url`` (drops pooled connections), with
    the Sentinel transport options the current settings ask for (celeryconfig
    computed them once, from the settings of when it was imported)."""
    app.conf.broker_url = url
    options = {
        key: value
        for key, value in app.conf.broker_transport_options.items()
        if key not in ("master_name", "sentinel_kwargs")
    }
    app.conf.broker_transport_options = {**options, **sentinel_transport_options(get_settings())}
    app._after_fork()


class FaultStack(Stack):
    """A :class:`Stack` that owns its Redis (and maybe PostgreSQL)."""

    def __init__(
        self, fleet: SimFleetProcess, workdir: Path, redis_server: ThrowawayRedis,
        postgres: ThrowawayPostgres | None,
    ) -> None:  # fmt: skip
        super().__init__(fleet, workdir / "logs")
        self.redis = redis_server
        self.postgres = postgres

    def assert_clean_run(self, ids: list) -> None:  # type: ignore[type-arg]
        """Every request finished; no BMC saw overlapping operations; none executed a
        command more often than its requests allow (counted in the BMC's own log)."""
        rows = self.requests(ids)
        assert len(rows) == len(ids)
        assert all(r.status in FINISHED_STATUSES for r in rows.values())
        overlaps = self.fleet.control.overlaps()
        assert overlaps["total"] == 0, overlaps
        for row in self.fleet.manifest:
            name = row["name"]
            extra = beyond_budget(self.power_commands(name), _request_actions(name))
            assert extra == 0, f"{name} executed {extra} command(s) more than its requests allow"


def _request_actions(name: str) -> list[str]:
    """The action of every request ever made for node ``name``."""
    with session_scope() as session:
        return [
            action.value
            for action in session.scalars(
                select(PowerRequest.action).join(Node).where(Node.name == name)
            )
        ]


@contextmanager
def _environment(
    monkeypatch: pytest.MonkeyPatch, broker_url: str, database_url: str | None,
    extra: dict[str, str],
) -> Iterator[None]:  # fmt: skip
    previous_broker = app.conf.broker_url
    monkeypatch.setenv("POWERQ_BROKER_URL", broker_url)
    if database_url:
        monkeypatch.setenv("POWERQ_DATABASE_URL", database_url)
    for key, value in {**FAST_PERIODS, **extra}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    reset_engines()
    use_broker(broker_url)
    try:
        yield
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        reset_engines()
        use_broker(previous_broker)


StackFactory = Callable[..., FaultStack]


@pytest.fixture
def fault_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: None
) -> Iterator[StackFactory]:
    """Build a stack: ``fault_stack(nodes=50, own_postgres=False, env={...})``."""
    built: list[tuple[FaultStack, object]] = []

    def build(
        nodes: int = 50, *, own_postgres: bool = False, transition: float = 1.0,
        env: dict[str, str] | None = None,
    ) -> FaultStack:  # fmt: skip
        redis_server = ThrowawayRedis(tmp_path / "redis")
        redis_server.start()
        postgres = ThrowawayPostgres(tmp_path / "pg") if own_postgres else None
        database_url = postgres.start() if postgres else None
        environment = _environment(monkeypatch, redis_server.url, database_url, env or {})
        environment.__enter__()
        if database_url:
            upgrade(database_url)
        fleet = SimFleetProcess(count=nodes, transition=transition, soft_delay=2.0)
        fleet.start()
        for row in fleet.manifest:
            fleet.control.set_power(row["name"], "on")
        fleet.control.reset_logs()
        stack = FaultStack(fleet, tmp_path, redis_server, postgres)
        built.append((stack, environment))
        stack.register_fleet()
        stack.start_workers()
        stack.start_scheduler()
        return stack

    yield build
    for stack, environment in built:
        stack.stop()
        stack.fleet.stop()
        environment.__exit__(None, None, None)  # type: ignore[attr-defined]
        stack.redis.kill()
        if stack.postgres is not None:
            stack.postgres.stop()
