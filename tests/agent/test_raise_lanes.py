"""``POWERQ_LANES`` raised on a live installation: two agents on 2 lanes drive a
batch of cycles, and while those run each agent in turn is restarted with 5
lanes and the publisher switches to the new node-to-lane mapping. Messages of
one node then reach its old lane and its new one; the claim in PostgreSQL
still runs each request in one worker at a time. Every request succeeds, no
BMC sees overlapping operations or a command more than its requests allow
(counted in the BMC's own log), no lane had two consumers (the step journal),
and the second batch runs on the new lanes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from powerq.bmc.simfleet.executions import beyond_budget
from powerq.bmc.simfleet.launcher import SimFleetProcess
from powerq.config import get_settings
from powerq.db import session_scope
from powerq.models import Node, PowerRequest
from powerq.states import Action, RequestStatus
from powerq.tasks import journal
from powerq.tasks.routing import lane_for
from tests.agent.agents import Agents, holders
from tests.cli.processes import wait_until
from tests.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.ipmi]

NODES = 40
OLD_LANES, NEW_LANES = 2, 5


@pytest.fixture
def installation(db: None, tmp_path: Path) -> Iterator[tuple[Stack, Agents, Path]]:
    """A fleet registered as nodes, the control worker with beat, and (not yet
    started) agents on 2 lanes with a short lease and the step journal on."""
    runs = tmp_path / "journal"
    runs.mkdir()
    with SimFleetProcess(count=NODES, transition=1.0) as fleet:
        for row in fleet.manifest:
            fleet.control.set_power(row["name"], "on")
        fleet.control.reset_logs()
        stack = Stack(fleet, tmp_path / "logs")
        stack.register_fleet()
        stack.start_scheduler()
        agents = Agents(tmp_path, {"POWERQ_LANES": str(OLD_LANES), "POWERQ_LANE_LEASE_S": "3",
                                   "POWERQ_STEP_JOURNAL": str(runs)})  # fmt: skip
        try:
            yield stack, agents, runs
        finally:
            agents.stop_all()
            stack.stop()


@pytest.fixture
def publisher_lanes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], None]]:
    """Switch this process's lane count (the API's publisher); the cached
    settings are dropped again afterwards, so later tests see the suite's."""

    def switch(lanes: int) -> None:
        monkeypatch.setenv("POWERQ_LANES", str(lanes))
        get_settings.cache_clear()

    yield switch
    monkeypatch.undo()
    get_settings.cache_clear()


def _lanes_held(count: int, agents: Agents) -> None:
    wait_until(lambda: set(holders()) == set(range(count)), f"lanes 0-{count - 1} held", 60,
               lambda: all(p.poll() is None for p in agents.running.values()))  # fmt: skip


def test_lanes_raised_mid_batch_run_every_request_once(
    installation: tuple[Stack, Agents, Path], publisher_lanes: Callable[[int], None]
) -> None:
    stack, agents, runs = installation
    names = [row["name"] for row in stack.fleet.manifest]
    agents.start("host-a")
    agents.start("host-b")
    _lanes_held(OLD_LANES, agents)

    cycles = [stack.submit(name, Action.CYCLE) for name in names]
    wait_until(lambda: _running(cycles), "cycles running", 60, lambda: True)
    for name in ("host-a", "host-b"):  # one host at a time, as an operator would
        assert agents.stop(name) == 0
        agents.start(name, env={"POWERQ_LANES": str(NEW_LANES)})
    publisher_lanes(NEW_LANES)  # the API's publisher too
    _lanes_held(NEW_LANES, agents)
    _all_succeeded(stack, cycles)
    offs = [stack.submit(name, Action.OFF) for name in names]
    _all_succeeded(stack, offs)

    assert stack.fleet.control.overlaps()["total"] == 0
    for name in names:
        extra = beyond_budget(stack.power_commands(name), ["cycle", "off"])
        assert extra == 0, f"{name} executed {extra} command(s) more than its requests allow"
    assert journal.overlaps(journal.read(runs)) == []
    with session_scope() as session:
        lanes = session.execute(
            select(Node.name, PowerRequest.lane).join(Node).where(PowerRequest.id.in_(offs))
        ).all()
    assert all(lane == lane_for(name, NEW_LANES) for name, lane in lanes)
    assert {lane for _, lane in lanes} - set(range(OLD_LANES))  # the new lanes did work


def _running(ids: list[uuid.UUID]) -> bool:
    rows = Stack.requests(ids).values()
    return any(row.status is RequestStatus.RUNNING for row in rows)


def _all_succeeded(stack: Stack, ids: list[uuid.UUID]) -> None:
    finished = stack.wait_finished(ids, timeout=180)
    failed = [(r.id, r.error) for r in finished.values() if r.status != RequestStatus.SUCCEEDED]
    assert not failed, failed[:5]
