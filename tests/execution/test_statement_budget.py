"""Statements per node-action: a budget, counted (never timed).

A node-action is query → send → check(s) → finish, run as a lane worker runs
it, against the in-process sim BMC. Every statement the executor sends to
PostgreSQL is counted with SQLAlchemy's ``before_cursor_execute`` event.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from powerq.bmc.base import BmcTarget
from powerq.bmc.sim import REGISTRY, SimPowerDriver
from powerq.models import PowerRequest
from powerq.states import Action, DriverKind, Evidence, PowerState, RequestStatus, Step
from powerq.tasks import steps
from tests.execution.inprocess import executed, request_for
from tests.factories import make_node
from tests.statements import count_statements

# claim, mark (with the query read), finish (with the verifying read); the
# waiting checks of a run write nothing (only an attempt that parks stores its
# last read), so a transition that was not learned yet costs no more.
NODE_ACTION_BUDGET = 3
TRANSITION_S = 0.5


@pytest.fixture
def slow_machine(session: Session) -> Iterator[tuple[int, SimPowerDriver]]:
    """A node whose BMC takes half a second to change power state (real clock)."""
    node = make_node(session, "budget-1", address="127.0.0.9", port=7101)
    target = BmcTarget(DriverKind.SIM.value, node.bmc_address, node.bmc_port, "admin", "")
    sim = REGISTRY.put(SimPowerDriver(target, power=PowerState.ON, transition=TRANSITION_S))
    yield node.id, sim
    REGISTRY.clear()


def _run(session: Session, node_id: int, action: Action) -> tuple[PowerRequest, list[str]]:
    from powerq.models import Node

    node = session.get(Node, node_id)
    assert node is not None
    request_id = request_for(session, node, action)
    with count_statements() as seen:
        steps.run_request(request_id)
    session.expire_all()
    request = session.get(PowerRequest, request_id)
    assert request is not None
    return request, seen


def test_a_verified_off_stays_within_the_statement_budget(
    session: Session, slow_machine: tuple[int, SimPowerDriver]
) -> None:
    node_id, sim = slow_machine
    request, seen = _run(session, node_id, Action.OFF)

    assert request.status is RequestStatus.SUCCEEDED, request.error
    assert request.evidence == Evidence.POWER_STATE.value
    assert executed(sim) == [Action.OFF]
    assert len(seen) <= NODE_ACTION_BUDGET, "\n".join(seen)
    assert request.checks >= 2  # the unlearned transition was polled more than once
    assert request.attempt == 1  # checks in the same run are not attempts


def test_a_learned_transition_is_verified_by_its_first_check(
    session: Session, slow_machine: tuple[int, SimPowerDriver]
) -> None:
    node_id, sim = slow_machine
    _run(session, node_id, Action.OFF)
    learning, _ = _run(session, node_id, Action.ON)
    # the node's last off and on are known now: each is checked just after it
    again_off, off_seen = _run(session, node_id, Action.OFF)
    again_on, on_seen = _run(session, node_id, Action.ON)

    assert learning.status is again_off.status is again_on.status is RequestStatus.SUCCEEDED
    assert executed(sim) == [Action.OFF, Action.ON, Action.OFF, Action.ON]
    # claim, mark, finish: no waiting check was needed
    assert len(off_seen) == 3, "\n".join(off_seen)
    assert len(on_seen) == 3, "\n".join(on_seen)


def test_a_query_is_two_statements(
    session: Session, slow_machine: tuple[int, SimPowerDriver]
) -> None:
    node_id, sim = slow_machine
    request, seen = _run(session, node_id, Action.QUERY)

    assert request.status is RequestStatus.SUCCEEDED and request.observed_after is PowerState.ON
    assert executed(sim) == []
    assert len(seen) == 2, "\n".join(seen)  # claim, finish (with the read)


def test_the_verifying_read_is_the_nodes_observed_state(
    session: Session, slow_machine: tuple[int, SimPowerDriver]
) -> None:
    from powerq.models import Node

    node_id, _ = slow_machine
    for action, state in ((Action.OFF, PowerState.OFF), (Action.ON, PowerState.ON)):
        request, _ = _run(session, node_id, action)
        node = session.get(Node, node_id)
        assert node is not None and request.observed_after is state
        assert node.power_state is state, (action, node.power_state_at, request.finished_at)


def test_a_cycle_keeps_the_state_it_started_from(
    session: Session, slow_machine: tuple[int, SimPowerDriver]
) -> None:
    from powerq.models import Node

    node_id, sim = slow_machine
    request, _ = _run(session, node_id, Action.CYCLE)

    assert request.status is RequestStatus.SUCCEEDED, request.error
    assert executed(sim) == [Action.OFF, Action.ON]
    assert request.observed_before is PowerState.ON  # not the off seen between the phases
    assert request.observed_after is PowerState.ON
    node = session.get(Node, node_id)
    assert node is not None and node.power_state is PowerState.ON


def test_an_attempt_that_parks_stores_its_last_read(
    session: Session, slow_machine: tuple[int, SimPowerDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    from powerq.models import Node
    from powerq.tasks import verify

    node_id, sim = slow_machine
    sim.transition = 30.0  # still on when the checks back off beyond the run's horizon
    monkeypatch.setattr(verify, "UNKNOWN_WINDOW_S", 0.3)
    request, seen = _run(session, node_id, Action.OFF)

    assert request.status is RequestStatus.RUNNING and request.next_step is Step.CHECK
    assert executed(sim) == [Action.OFF]
    # claim, mark, then the parked attempt's last read and the park itself
    assert len(seen) == 4, "\n".join(seen)
    node = session.get(Node, node_id)
    assert node is not None and node.power_state is PowerState.ON
    assert request.command_sent_at is not None and node.power_state_at is not None
    assert node.power_state_at > request.command_sent_at
