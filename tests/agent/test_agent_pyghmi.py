"""Agents against a BMC implementation powerq did not write: pyghmi's BMC server
(the engine of VirtualBMC), one process per machine, answering slowly.

Two agents share two lanes; a cycle is asked of every machine and the agent
holding one lane is SIGKILLed while they run. Its lane is taken over, every
cycle succeeds, and each BMC's own event log shows it executed exactly one
power-off and one power-on: the hand-over of a lane repeated nothing at the
machine. The control worker runs as the Procfile's ``beat`` line runs it
(``powerq worker --control --beat``)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerq.db import session_scope
from powerq.intents import find_node, request_power
from powerq.inventory import NodeSpec, create_node
from powerq.models import PowerRequest
from powerq.states import FINISHED_STATUSES, Action, DriverKind, RequestStatus
from powerq.supervisor import ProcessGroup
from powerq.tasks.dispatch import dispatch_request
from powerq.tasks.routing import lane_for
from tests.agent.agents import Agents, holders
from tests.bmc.pyghmi_bmc import PyghmiBmcProcess
from tests.cli.processes import wait_until
from tests.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.ipmi]

LANES = 2
ANSWER_DELAY_S = 0.3  # every answer of the BMC comes this late
FAST = {"POWERQ_SWEEP_INTERVAL_S": "1", "POWERQ_REDISPATCH_AFTER_S": "3"}


def _names(per_lane: int) -> list[str]:
    """``per_lane`` node names on each lane."""
    by_lane: dict[int, list[str]] = {lane: [] for lane in range(LANES)}
    for n in range(100):
        name = f"pyghmi-{n}"
        by_lane[lane_for(name, LANES)].append(name)
    return [name for names in by_lane.values() for name in names[:per_lane]]


@pytest.fixture
def machines(db: None) -> Iterator[dict[str, PyghmiBmcProcess]]:
    """Four pyghmi BMC servers, each registered as a node (all powered on)."""
    servers: dict[str, PyghmiBmcProcess] = {}
    try:
        for name in _names(per_lane=2):
            servers[name] = PyghmiBmcProcess(state="on", delay=ANSWER_DELAY_S).__enter__()
        with session_scope() as session:
            for name, server in servers.items():
                spec = NodeSpec(name, DriverKind.IPMI, "127.0.0.1", server.port,
                                server.user, server.password)  # fmt: skip
                create_node(session, spec, actor="test")
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _cycle(name: str) -> uuid.UUID:
    with session_scope() as session:
        intent = request_power(session, find_node(session, name), Action.CYCLE, actor="test")
        request_id = intent.request.id
    dispatch_request(request_id, name, Action.CYCLE)
    return request_id


def _all_finished(ids: list[uuid.UUID]) -> dict[uuid.UUID, PowerRequest] | None:
    rows = Stack.requests(ids)
    return rows if all(row.status in FINISHED_STATUSES for row in rows.values()) else None


def test_a_lane_taken_over_from_a_killed_agent_repeats_nothing_at_the_bmc(
    machines: dict[str, PyghmiBmcProcess], tmp_path: Path
) -> None:
    env = {"POWERQ_LANES": str(LANES), "POWERQ_LANE_LEASE_S": "3", **FAST}
    agents = Agents(tmp_path, env)
    control = ProcessGroup(env={**agents.env}, log_dir=tmp_path / "logs")
    try:
        control.python("beat", "powerq.cli", "worker", "--control", "--beat")
        victim, survivor = agents.start("host-a"), agents.start("host-b")
        wait_until(lambda: set(holders().values()) == {"host-a", "host-b"},
                   "each agent holding a lane", 60, lambda: victim.poll() is None)  # fmt: skip
        for server in machines.values():
            server.reset_events()

        victims_lanes = {lane for lane, owner in holders().items() if owner == "host-a"}
        ids = [_cycle(name) for name in machines]
        in_flight = [
            row.node_id for row in Stack.requests(ids).values()
            if row.status not in FINISHED_STATUSES
        ]  # fmt: skip
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        wait_until(lambda: holders() == dict.fromkeys(range(LANES), "host-b"),
                   "host-b holding both lanes", 60, lambda: survivor.poll() is None)  # fmt: skip
        finished = wait_until(lambda: _all_finished(ids), "every cycle finished", 120,
                              lambda: survivor.poll() is None)  # fmt: skip
    finally:
        agents.stop_all()
        control.stop_all()

    with session_scope() as session:
        names = {find_node(session, name).id: name for name in machines}
    assert any(lane_for(names[node], LANES) in victims_lanes for node in in_flight), (
        "the kill hit nothing: the killed agent's cycles had all finished"
    )
    assert {row.status for row in finished.values()} == {RequestStatus.SUCCEEDED}
    for name, server in machines.items():
        server.settle(quiet_s=2 * ANSWER_DELAY_S)
        executed = [event["event"] for event in server.executions()]
        assert executed == ["power_off", "power_on"], f"{name} executed {executed}"
