"""Claims fence every later write: a stale attempt's write changes nothing."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from powerq.intents import request_power
from powerq.models import Node, PowerEvent, PowerRequest
from powerq.states import Action, PowerState, RequestStatus, Step
from powerq.tasks import leases
from tests.factories import make_node


def _pending(session: Session, action: Action = Action.OFF) -> PowerRequest:
    node = make_node(session)
    intent = request_power(session, node, action, actor="test")
    session.commit()
    return intent.request


def _expire_lease(session: Session, request: PowerRequest) -> None:
    session.execute(
        update(PowerRequest)
        .where(PowerRequest.id == request.id)
        .values(lease_expires_at=PowerRequest.lease_expires_at - leases.CLAIM_TOLERANCE * 100)
    )
    session.commit()


def test_a_claim_takes_a_pending_request_once(session: Session) -> None:
    request = _pending(session)
    first = leases.claim(request.id, lease_s=60)
    assert first is not None and first.attempt == 1
    assert leases.claim(request.id, lease_s=60) is None  # leased: nobody else may run it


def test_stale_attempt_writes_change_nothing(session: Session) -> None:
    request = _pending(session)
    stale = leases.claim(request.id, lease_s=60)
    assert stale is not None
    _expire_lease(session, request)  # the stale worker hung past its lease
    fresh = leases.claim(request.id, lease_s=60)
    assert fresh is not None and fresh.attempt == stale.attempt + 1

    assert leases.park(stale, delay_s=1, next_step=Step.CHECK) is None
    assert leases.mark_command_sent(stale, Action.OFF, lease_s=60) is None
    assert leases.record_observation(stale, PowerState.OFF, lease_s=60) is None
    assert not leases.finish(
        stale, RequestStatus.SUCCEEDED, observed=PowerState.OFF, fault_threshold=3
    ).owned

    session.expire_all()
    row = session.get(PowerRequest, request.id)
    assert row is not None
    assert row.status is RequestStatus.RUNNING
    assert row.attempt == fresh.attempt
    assert row.next_step is Step.QUERY
    assert row.command_sent_at is None
    node = session.get(Node, row.node_id)
    assert node is not None and node.consecutive_failures == 0

    assert leases.finish(
        fresh, RequestStatus.SUCCEEDED, observed=PowerState.OFF, fault_threshold=3
    ).owned
    session.expire_all()
    assert session.get(PowerRequest, request.id).status is RequestStatus.SUCCEEDED  # type: ignore[union-attr]


def test_a_finished_request_cannot_be_claimed(session: Session) -> None:
    request = _pending(session)
    c = leases.claim(request.id, lease_s=60)
    assert c is not None
    assert leases.finish(c, RequestStatus.FAILED, error="x", fault_threshold=3).owned
    assert leases.claim(request.id, lease_s=60) is None


def test_a_parked_attempts_continuation_keeps_the_attempt(session: Session) -> None:
    request = _pending(session)
    first = leases.claim(request.id, lease_s=60)
    assert first is not None and first.attempt == 1
    parked_until = leases.park(first, next_step=Step.CHECK, delay_s=0.01)
    assert parked_until is not None
    parked = leases.Parked(first.attempt, parked_until)
    going_on = leases.claim(request.id, lease_s=60, continuing=parked)
    assert going_on is not None and going_on.attempt == 1 and going_on.next_step is Step.CHECK
    # the same continuation delivered again (after the lease ran out) is a takeover
    _expire_lease(session, request)
    again = leases.claim(request.id, lease_s=60, continuing=parked)
    assert again is not None and again.attempt == 2


def test_a_continuation_cannot_take_a_running_attempts_lease(session: Session) -> None:
    request = _pending(session)
    running = leases.claim(request.id, lease_s=60)
    assert running is not None
    parked = leases.Parked(running.attempt, None)
    assert leases.claim(request.id, lease_s=60, continuing=parked) is None


def test_two_runs_of_one_attempt_cannot_both_mark_a_command(session: Session) -> None:
    request = _pending(session)
    first = leases.claim(request.id, lease_s=60)
    assert first is not None
    # a second run holding the same attempt (however it came to) saw the same marks
    twin = first
    assert leases.mark_command_sent(first, Action.OFF, lease_s=60) is not None
    assert leases.mark_command_sent(twin, Action.OFF, lease_s=60) is None


def test_failures_raise_a_power_fault_and_a_success_clears_it(session: Session) -> None:
    node = make_node(session)
    for _ in range(3):
        request = request_power(session, node, Action.ON, actor="test").request
        session.commit()
        c = leases.claim(request.id, lease_s=60)
        assert c is not None
        leases.finish(c, RequestStatus.FAILED, error="BMC unreachable", fault_threshold=3)
    session.expire_all()
    faulty = session.get(Node, node.id)
    assert faulty is not None and faulty.power_fault and faulty.consecutive_failures == 3
    assert "BMC unreachable" in (faulty.power_fault_reason or "")

    request = request_power(session, faulty, Action.ON, actor="test").request
    session.commit()
    c = leases.claim(request.id, lease_s=60)
    assert c is not None
    leases.finish(c, RequestStatus.SUCCEEDED, observed=PowerState.ON, fault_threshold=3)
    session.expire_all()
    healed = session.get(Node, node.id)
    assert healed is not None and not healed.power_fault and healed.last_error is None
    kinds = session.scalars(
        select(PowerEvent.kind).where(PowerEvent.node_id == node.id).order_by(PowerEvent.id)
    ).all()
    # each failure is recorded, the third raises the fault once, the success clears it
    assert [
        k for k in kinds if k in ("failed", "power_fault", "power_fault_cleared", "succeeded")
    ] == [
        "failed",
        "failed",
        "failed",
        "power_fault",
        "power_fault_cleared",
        "succeeded",
    ]
