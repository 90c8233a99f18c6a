"""The sweeper finds lost work in PostgreSQL and rings its lane again (no workers here)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import redis
from sqlalchemy import func, update
from sqlalchemy.orm import Session

from powerq.config import get_settings
from powerq.intents import request_power
from powerq.models import PowerRequest
from powerq.states import Action, RequestStatus
from powerq.tasks import leases
from powerq.tasks.routing import lane_for, lane_queue
from powerq.tasks.sweeper import EXPIRE_GRACE, sweep_once
from tests.factories import make_node


def _request(session: Session, name: str, action: Action = Action.OFF) -> uuid.UUID:
    node = make_node(session, name)
    request = request_power(session, node, action, actor="test").request
    session.commit()
    return request.id


def _shift(session: Session, request_id: uuid.UUID, **ages: timedelta) -> None:
    """Move timestamps of a request into the past."""
    values = {column: func.now() - age for column, age in ages.items()}
    session.execute(update(PowerRequest).where(PowerRequest.id == request_id).values(**values))
    session.commit()


def _queued(name: str) -> int:
    queue = lane_queue(lane_for(name, get_settings().lanes))
    url = get_settings().broker_url
    assert url
    return int(redis.Redis.from_url(url).llen(queue))


def test_undispatched_pending_request_is_dispatched_once(session: Session) -> None:
    request_id = _request(session, "never-rung")  # committed, but no message sent

    first = sweep_once()
    second = sweep_once()

    assert first.redispatched == [request_id]
    assert second.redispatched == []  # dispatched just now: not again before the period
    assert _queued("never-rung") == 1


def test_dispatched_but_never_claimed_is_rung_again_after_the_period(session: Session) -> None:
    request_id = _request(session, "lost-message")
    _shift(session, request_id, dispatched_at=timedelta(hours=1))
    assert sweep_once().redispatched == [request_id]


def test_running_request_with_a_lost_lease_is_rung_again(session: Session) -> None:
    request_id = _request(session, "worker-died")
    claim = leases.claim(request_id, lease_s=60)
    assert claim is not None
    assert sweep_once().redispatched == []  # leased: a worker holds it

    _shift(
        session,
        request_id,
        lease_expires_at=timedelta(minutes=1),
        dispatched_at=timedelta(minutes=1),
    )
    assert sweep_once().redispatched == [request_id]


def test_overdue_request_is_left_to_a_worker_until_far_past_its_deadline(session: Session) -> None:
    request_id = _request(session, "overdue")
    assert leases.claim(request_id, lease_s=60) is not None
    _shift(
        session,
        request_id,
        deadline_at=timedelta(seconds=30),
        lease_expires_at=timedelta(seconds=30),
        dispatched_at=timedelta(seconds=30),
    )
    report = sweep_once()
    assert report.expired == [] and report.redispatched == [request_id]

    _shift(session, request_id, deadline_at=EXPIRE_GRACE + timedelta(minutes=1))
    assert sweep_once().expired == [request_id]
    session.expire_all()
    failed = session.get(PowerRequest, request_id)
    assert failed is not None and failed.status is RequestStatus.FAILED
    assert "are the lane workers running" in (failed.error or "")


def test_held_and_future_requests_are_not_dispatched(session: Session) -> None:
    held = _request(session, "held")
    later = _request(session, "later")
    session.execute(update(PowerRequest).where(PowerRequest.id == held).values(held=True))
    session.execute(
        update(PowerRequest)
        .where(PowerRequest.id == later)
        .values(not_before=func.now() + timedelta(hours=1))
    )
    session.commit()
    assert sweep_once().redispatched == []


def _lane_key(name: str) -> str:
    return lane_queue(lane_for(name, get_settings().lanes))


def test_a_request_waiting_in_a_busy_lane_is_not_rung_again(session: Session) -> None:
    """Its message is most likely still queued: a duplicate would only add load."""
    request_id = _request(session, "busy-lane")
    assert sweep_once().redispatched == [request_id]  # rung once: now queued, no consumer
    _shift(session, request_id, dispatched_at=timedelta(hours=1))

    assert sweep_once().redispatched == []  # the lane still holds messages
    assert _queued("busy-lane") == 1

    url = get_settings().broker_url
    assert url
    redis.Redis.from_url(url).delete(_lane_key("busy-lane"))  # the message is lost
    assert sweep_once().redispatched == [request_id]
    assert _queued("busy-lane") == 1


def test_each_ring_waits_twice_as_long_as_the_one_before(session: Session) -> None:
    request_id = _request(session, "no-consumer")
    url = get_settings().broker_url
    assert url
    broker = redis.Redis.from_url(url)
    period = get_settings().redispatch_after_s
    rings = 0
    for count in (1, 2, 3):
        broker.delete(_lane_key("no-consumer"))
        session.execute(
            update(PowerRequest).where(PowerRequest.id == request_id).values(dispatch_count=count)
        )
        session.commit()
        # just short of this ring's wait: nothing; just past it: one ring
        _shift(session, request_id, dispatched_at=timedelta(seconds=period * 2 ** (count - 1) - 1))
        assert sweep_once().redispatched == []
        _shift(session, request_id, dispatched_at=timedelta(seconds=period * 2 ** (count - 1) + 1))
        rings += len(sweep_once().redispatched)
    assert rings == 3


def test_a_new_lane_worker_resumes_what_its_dead_predecessor_held(session: Session) -> None:
    from powerq.tasks import lane_fence
    from powerq.tasks.lane_fence import LaneFence
    from powerq.tasks.lifecycle import resume_lane

    request_id = _request(session, "predecessor-died")
    lane = lane_for("predecessor-died", get_settings().lanes)
    lane_fence.hold(LaneFence(lane, None))  # claimed by that lane's worker
    try:
        assert leases.claim(request_id, lease_s=60) is not None  # then it was SIGKILLed
    finally:
        lane_fence.hold(None)
    url = get_settings().broker_url
    assert url
    redis.Redis.from_url(url).delete(_lane_key("predecessor-died"))

    assert resume_lane(lane + 1) == []  # not another lane's
    assert resume_lane(lane) == [request_id]

    assert _queued("predecessor-died") == 1
    assert leases.claim(request_id, lease_s=60) is not None  # no waiting for the lease
