"""A simulated fleet and real lane workers, shared by a module's end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from powerq.bmc.base import BmcTarget
from powerq.bmc.sim import REGISTRY, SimPowerDriver
from powerq.bmc.simfleet.launcher import SimFleetProcess
from powerq.models import Node
from powerq.states import DriverKind, PowerState
from tests.factories import make_node
from tests.stack import Stack

FLEET_SIZE = 24
TRANSITION_S = 1.0


@pytest.fixture(scope="module")
def fleet() -> Iterator[SimFleetProcess]:
    """A fleet over real IPMI on loopback; no two power operations may overlap on any BMC."""
    with SimFleetProcess(count=FLEET_SIZE, transition=TRANSITION_S, soft_delay=2.0) as running:
        yield running
        overlaps = running.control.overlaps()
    assert overlaps["total"] == 0, f"power operations overlapped: {overlaps}"


@pytest.fixture(scope="module")
def stack(
    fleet: SimFleetProcess, tmp_path_factory: pytest.TempPathFactory, services: object
) -> Iterator[Stack]:
    """Real lane workers (subprocesses) against the suite's PostgreSQL and Redis."""
    live = Stack(fleet, tmp_path_factory.mktemp("workers"))
    live.start_workers()
    yield live
    live.stop()


@pytest.fixture
def live(stack: Stack, db: None) -> Stack:
    """The stack with an empty database, fleet logs cleared and every machine on."""
    stack.fleet.control.reset_logs()
    for row in stack.fleet.manifest:
        stack.fleet.control.clear_fault(row["name"])
        stack.fleet.control.set_behaviour(row["name"], transition=TRANSITION_S, soft_delay=2.0)
        stack.fleet.control.set_power(row["name"], "on")
    stack.fleet.control.reset_logs()
    return stack


def worker_log(stack: Stack, lane: int) -> Path | None:
    """Where lane ``lane``'s worker writes its log (for failure messages)."""
    return stack.processes.children[f"lane{lane}"].log_path


@pytest.fixture
def machine(session: Session) -> Iterator[tuple[Node, SimPowerDriver]]:
    """A node on an in-process sim BMC (on, instantaneous) for in-process step tests."""
    node = make_node(session, "honest-1", address="127.0.0.9", port=7001)
    target = BmcTarget(DriverKind.SIM.value, node.bmc_address, node.bmc_port, "admin", "")
    sim = REGISTRY.put(SimPowerDriver(target, power=PowerState.ON))
    yield node, sim
    REGISTRY.clear()
