"""A run that loses the database mid-way: its retry takes the request back at once
(same attempt) when nothing was written since, and never sends a command twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from powerq.bmc.sim import SimPowerDriver
from powerq.models import Node, PowerRequest
from powerq.states import Action, RequestStatus
from powerq.tasks import leases, steps
from tests.execution.inprocess import executed, request_for
from tests.factories import make_node


def _lost(name: str) -> OperationalError:
    return OperationalError(f"{name}: server closed the connection", {}, Exception("gone"))


def _failing_once(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Make ``leases.<name>`` raise a lost-database error on its first call only."""
    real: Callable[..., Any] = getattr(leases, name)
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise _lost(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(leases, name, flaky)
    return calls


def test_the_retry_of_a_run_that_lost_the_database_takes_its_attempt_back_at_once(
    session: Session, machine: tuple[Node, SimPowerDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, sim = machine
    request_id = request_for(session, node, Action.OFF)
    calls = _failing_once(monkeypatch, "finish")

    with pytest.raises(steps.Interrupted) as lost:
        steps.run_request(request_id)
    assert lost.value.parked.attempt == 1 and lost.value.parked.until is not None

    # the lease is far from over, and only the interrupted attempt's retry may take it
    assert leases.claim(request_id, lease_s=60) is None
    assert leases.claim(request_id, lease_s=60, continuing=leases.Parked(1, None)) is None
    steps.run_request(request_id, continuing=lost.value.parked)

    session.expire_all()
    request = session.get(PowerRequest, request_id)
    assert request is not None and request.status is RequestStatus.SUCCEEDED, request
    assert request.attempt == 1  # the same attempt went on: no takeover
    assert executed(sim) == [Action.OFF]  # settled by reading, not by sending again
    assert len(calls) == 2


def test_a_retry_naming_a_lease_that_was_renewed_since_waits_for_it(
    session: Session, machine: tuple[Node, SimPowerDriver]
) -> None:
    node, _ = machine
    request_id = request_for(session, node, Action.OFF)
    first = leases.claim(request_id, lease_s=60)
    assert first is not None and first.lease_until is not None
    # the mark committed but its answer was lost: the run only knew the claim's lease
    assert leases.mark_command_sent(first, Action.OFF, lease_s=60) is not None

    stale = leases.Parked(first.attempt, first.lease_until)
    assert leases.claim(request_id, lease_s=60, continuing=stale) is None


def test_the_retry_message_names_the_attempt_and_its_lease(
    session: Session, machine: tuple[Node, SimPowerDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the Celery task (applied eagerly, so its retry runs at once)."""
    node, sim = machine
    request_id = request_for(session, node, Action.CYCLE)
    _failing_once(monkeypatch, "mark_command_sent")

    steps.step.apply(args=(str(request_id),))

    session.expire_all()
    request = session.get(PowerRequest, request_id)
    assert request is not None and request.status is RequestStatus.SUCCEEDED, request.error
    assert request.attempt == 1
    assert executed(sim) == [Action.OFF, Action.ON]


def test_a_lost_database_during_a_claim_is_retried_as_before(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node(session, "claim-lost")
    request_id = request_for(session, node, Action.QUERY)
    _failing_once(monkeypatch, "claim")
    with pytest.raises(OperationalError):
        steps.run_request(request_id)  # nothing held: Celery's own retry runs it again
