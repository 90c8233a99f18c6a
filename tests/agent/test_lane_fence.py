"""A lane worker claims and marks commands only under its lane's current lease:
once the lane changed hands, its claims take nothing and its marks (written
before any command goes out) are refused, so it sends nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from powerq.agent import leases as lane_leases
from powerq.agent.leases import Identity
from powerq.intents import request_power
from powerq.models import PowerRequest
from powerq.states import Action, RequestStatus
from powerq.tasks import lane_fence, leases
from powerq.tasks.lane_fence import LaneFence
from tests.factories import make_node

LANE = 2


@pytest.fixture
def fenced() -> Iterator[None]:
    yield
    lane_fence.hold(None)


def _pending(session: Session, action: Action = Action.CYCLE) -> PowerRequest:
    node = make_node(session, name=f"node-{uuid.uuid4().hex[:8]}")
    intent = request_power(session, node, action, actor="test")
    session.commit()
    return intent.request


def _take_lane(name: str) -> int:
    me = Identity(name, uuid.uuid4(), 1, True)
    return lane_leases.acquire(me, [LANE], lease_s=30)[LANE]


def _lane_changes_hands(session: Session) -> int:
    session.execute(text("UPDATE lane_leases SET expires_at = now() WHERE lane = :l"), {"l": LANE})
    session.commit()
    return _take_lane("other")


def test_a_claim_under_the_current_fence_runs(session: Session, fenced: None) -> None:
    request = _pending(session)
    lane_fence.hold(LaneFence(LANE, _take_lane("me")))

    assert leases.claim(request.id, lease_s=60) is not None


def test_a_claim_under_a_stale_fence_takes_nothing(session: Session, fenced: None) -> None:
    request = _pending(session)
    lane_fence.hold(LaneFence(LANE, _take_lane("me")))
    _lane_changes_hands(session)

    assert leases.claim(request.id, lease_s=60) is None
    session.expire_all()
    row = session.get(PowerRequest, request.id)
    assert row is not None and row.status is RequestStatus.PENDING and row.attempt == 0


def test_an_expired_lease_fences_even_before_anyone_takes_the_lane(
    session: Session, fenced: None
) -> None:
    request = _pending(session)
    lane_fence.hold(LaneFence(LANE, _take_lane("me")))
    session.execute(text("UPDATE lane_leases SET expires_at = now() - interval '1 s'"))
    session.commit()

    assert leases.claim(request.id, lease_s=60) is None


def test_no_command_is_marked_sent_under_a_stale_fence(session: Session, fenced: None) -> None:
    request = _pending(session)
    lane_fence.hold(LaneFence(LANE, _take_lane("me")))
    claim = leases.claim(request.id, lease_s=60)
    assert claim is not None
    _lane_changes_hands(session)  # e.g. this worker was frozen longer than the lease

    assert leases.mark_command_sent(claim, Action.CYCLE, lease_s=60) is None
    session.expire_all()
    row = session.get(PowerRequest, request.id)
    assert row is not None and row.command_sent_at is None


def test_an_unfenced_worker_checks_no_lane(session: Session, fenced: None) -> None:
    request = _pending(session)
    lane_fence.hold(None)  # `powerq worker --lane K`, run on its own

    claim = leases.claim(request.id, lease_s=60)
    assert claim is not None
    assert leases.mark_command_sent(claim, Action.CYCLE, lease_s=60) is not None


def test_a_starting_worker_resumes_only_what_other_consumers_of_its_lane_held(
    session: Session, fenced: None
) -> None:
    from powerq.tasks.lifecycle import resume_lane

    old_fence = _take_lane("me")
    earlier = _pending(session)
    lane_fence.hold(LaneFence(LANE, old_fence))
    assert leases.claim(earlier.id, lease_s=60) is not None  # then that worker died
    other_lane = _pending(session)
    lane_fence.hold(LaneFence(LANE + 1, None))
    assert leases.claim(other_lane.id, lease_s=60) is not None  # alive, on another lane
    new_fence = _lane_changes_hands(session)
    mine = _pending(session)
    lane_fence.hold(LaneFence(LANE, new_fence))
    assert leases.claim(mine.id, lease_s=60) is not None

    assert resume_lane(LANE, new_fence) == [earlier.id]


def test_no_claim_once_less_than_the_margin_of_the_lease_is_left(
    session: Session, fenced: None
) -> None:
    request = _pending(session)
    lane_fence.hold(LaneFence(LANE, _take_lane("me")))
    session.execute(text("UPDATE lane_leases SET expires_at = now() + interval '1 s'"))
    session.commit()  # the agent is late renewing: its workers stop before the lease runs out

    assert leases.claim(request.id, lease_s=60) is None
