"""Recording intent: desired state follows requests, and a cancel withdraws it."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from powerq.errors import Conflict, ConflictingRequest
from powerq.intents import cancel_request, request_power
from powerq.models import Node, PowerRequest
from powerq.states import Action, DesiredPowerState, RequestStatus
from tests.factories import make_node


def _finish(session: Session, request: PowerRequest) -> None:
    request.status = RequestStatus.SUCCEEDED
    session.commit()


def test_identical_request_is_answered_with_the_outstanding_one(session: Session) -> None:
    node = make_node(session)
    first = request_power(session, node, Action.OFF, actor="a")
    again = request_power(session, node, Action.OFF, actor="b")
    assert first.created and not again.created
    assert again.request.id == first.request.id


def test_conflicting_request_is_refused_and_changes_nothing(session: Session) -> None:
    node = make_node(session)
    first = request_power(session, node, Action.OFF, actor="a").request
    session.commit()
    with pytest.raises(ConflictingRequest) as refused:
        request_power(session, node, Action.ON, actor="b")
    assert refused.value.extra["outstanding"].id == first.id
    session.rollback()
    assert session.get(Node, node.id).desired_power_state is DesiredPowerState.OFF  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("earlier", "cancelled", "restored"),
    [
        (None, Action.OFF, None),
        (Action.ON, Action.CYCLE, DesiredPowerState.ON),  # cycle kept "on": still on
        (Action.ON, Action.OFF, DesiredPowerState.ON),
        (Action.OFF, Action.ON, DesiredPowerState.OFF),
    ],
)
def test_cancel_puts_back_the_desired_state_it_replaced(
    session: Session, earlier: Action | None, cancelled: Action, restored: DesiredPowerState | None
) -> None:
    node = make_node(session)
    if earlier is not None:
        _finish(session, request_power(session, node, earlier, actor="a").request)
    pending = request_power(session, node, cancelled, actor="a").request
    session.commit()

    cancel_request(session, pending.id, actor="a")
    session.commit()

    assert session.get(Node, node.id).desired_power_state is restored  # type: ignore[union-attr]


def test_a_claimed_request_cannot_be_cancelled(session: Session) -> None:
    node = make_node(session)
    request = request_power(session, node, Action.OFF, actor="a").request
    request.status = RequestStatus.RUNNING
    session.commit()
    with pytest.raises(Conflict):
        cancel_request(session, request.id, actor="a")


def test_an_intent_racing_a_cancel_never_loses_the_desired_state(session: Session) -> None:
    """A POST that read the node before a cancel committed must still leave desired
    matching its own outstanding request (else enforcement would undo it)."""
    from powerq.db import session_scope

    node = make_node(session, "race-1", port=9601)
    node.desired_power_state = DesiredPowerState.ON
    session.commit()
    first = request_power(session, node, Action.OFF, actor="a").request  # desired: off
    session.commit()

    with session_scope() as poster:  # reads the node now: desired off (soon stale)
        stale = poster.get(Node, node.id)
        assert stale is not None and stale.desired_power_state is DesiredPowerState.OFF
        with session_scope() as canceller:
            cancel_request(canceller, first.id, actor="b")  # desired back to on
        second = request_power(poster, stale, Action.OFF, actor="a").request

    session.expire_all()
    fresh = session.get(Node, node.id)
    assert fresh is not None
    assert second.status is RequestStatus.PENDING
    assert fresh.desired_power_state is DesiredPowerState.OFF
