"""The PostgreSQL connection budget of a default deployment, computed from the
settings: every pool's size plus overflow, summed over the processes, stays at
or under :data:`powerq.budget.CEILING`, below PostgreSQL's default
``max_connections`` (a count, not a measurement)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from powerq import budget
from powerq.config import Settings
from powerq.up import up

PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"
_SETTINGS_ENV = (
    "POWERQ_LANES",
    "POWERQ_DB_POOL_SIZE",
    "POWERQ_DB_MAX_OVERFLOW",
    "POWERQ_API_THREADS",
)


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a fresh install has them (the suite sets POWERQ_LANES=2)."""
    for name in _SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    return Settings()


def test_powerq_up_stays_under_the_ceiling(defaults: Settings) -> None:
    plan = budget.up_budget(defaults)

    assert (plan.lanes, plan.per_lane, plan.per_control) == (8, 6, 6)
    assert (plan.api_workers, plan.per_api_worker) == (1, 11)
    assert plan.total == 68
    assert plan.total <= budget.CEILING < budget.POSTGRES_DEFAULT_MAX_CONNECTIONS


def test_the_procfile_stays_under_the_ceiling(defaults: Settings) -> None:
    plan = budget.procfile_budget(defaults)

    assert plan.total == 78
    assert plan.total <= budget.CEILING


def test_the_budget_counts_what_powerq_up_and_the_procfile_start() -> None:
    web = next(line for line in PROCFILE.read_text().splitlines() if line.startswith("web:"))
    processes = [line.split(":")[0] for line in PROCFILE.read_text().splitlines()
                 if re.match(r"\w+:", line)]  # fmt: skip
    workers = re.search(r"--workers \$\{POWERQ_WEB_WORKERS:-(\d+)\}", web)
    api_workers = next(p for p in up.params if p.name == "api_workers")

    assert workers is not None and int(workers.group(1)) == budget.PROCFILE_API_WORKERS
    assert processes == ["web", "agent", "beat", "flower"]  # the agent runs every lane
    assert api_workers.default == budget.UP_API_WORKERS


def test_the_api_counts_a_connection_per_thread_plus_overflow(defaults: Settings) -> None:
    wide = defaults.model_copy(update={"api_threads": 32})

    assert budget.up_budget(wide).per_api_worker == 32 + defaults.db_max_overflow
    assert budget.up_budget(wide).per_lane == defaults.db_pool_size + defaults.db_max_overflow


def test_the_server_room_is_max_connections_less_its_reserved_slots(services: object) -> None:
    from powerq.db import get_engine

    with get_engine().connect() as connection:
        room = budget.server_room(connection)
        shown = {
            name: int(connection.exec_driver_sql(f"SHOW {name}").scalar_one())
            for name in ("max_connections", "superuser_reserved_connections")
        }

    # PostgreSQL 16 adds reserved_connections, 0 by default.
    assert room == shown["max_connections"] - shown["superuser_reserved_connections"]


def test_powerq_up_warns_in_one_line_when_the_server_is_too_small(
    services: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from powerq.config import get_settings
    from powerq.up import warn_if_over_connection_budget

    monkeypatch.setenv("POWERQ_LANES", "8")
    get_settings.cache_clear()
    try:
        warn_if_over_connection_budget(api_workers=1)  # 68: fits a default server (97)
        quiet = capsys.readouterr().err
        monkeypatch.setenv("POWERQ_LANES", "40")
        get_settings.cache_clear()
        warn_if_over_connection_budget(api_workers=1)  # 40 x 6 + 6 + 11 + 3 = 260
        warned = capsys.readouterr().err
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

    assert quiet == ""
    assert warned.count("\n") == 1
    assert warned.startswith("powerq up: warning: this stack may open up to 260 PostgreSQL")
    assert "raise max_connections" in warned
