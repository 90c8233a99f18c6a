"""Lanes that change hands together resume their predecessors' work at once.

An agent that takes over a dead agent's lanes starts their workers together,
and each one ends, at start, the leases its lane's dead predecessor held
(:func:`powerq.tasks.lifecycle.resume_lane`). One lane's resume must not
skip another lane's requests because the other's resume has them in hand.
"""

from __future__ import annotations

import threading
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from powerq.config import get_settings
from powerq.db import session_scope
from powerq.intents import request_power
from powerq.models import PowerRequest
from powerq.states import Action
from powerq.tasks import lane_fence, leases
from powerq.tasks.lane_fence import LaneFence
from powerq.tasks.lifecycle import resume_lane
from powerq.tasks.routing import lane_for
from tests.factories import make_node


def _claimed_by_a_dead_worker(session: Session, name: str) -> uuid.UUID:
    """A request claimed by its lane's worker (unfenced), which then died."""
    node = make_node(session, name)
    request_id = request_power(session, node, Action.OFF, actor="test").request.id
    session.commit()
    lane_fence.hold(LaneFence(lane_for(name, get_settings().lanes), None))
    try:
        assert leases.claim(request_id, lease_s=60) is not None
    finally:
        lane_fence.hold(None)
    return request_id


def test_a_row_in_another_transactions_hands_is_waited_for_not_skipped(session: Session) -> None:
    request_id = _claimed_by_a_dead_worker(session, "resumed-together")
    lane = lane_for("resumed-together", get_settings().lanes)
    locked, release = threading.Event(), threading.Event()

    def another_lane_resuming() -> None:  # as an older resume_lane of another lane did
        with session_scope() as other:
            other.execute(select(PowerRequest).with_for_update())
            locked.set()
            release.wait(10)

    thread = threading.Thread(target=another_lane_resuming)
    thread.start()
    assert locked.wait(10)
    threading.Timer(0.3, release.set).start()

    assert resume_lane(lane) == [request_id]
    thread.join(10)
    assert leases.claim(request_id, lease_s=60) is not None  # no waiting for the lease


def test_only_this_lanes_requests_are_resumed(session: Session) -> None:
    lanes = get_settings().lanes
    names = [f"resume-{i}" for i in range(8)]
    ids = {name: _claimed_by_a_dead_worker(session, name) for name in names}
    lane = lane_for(names[0], lanes)

    resumed = resume_lane(lane)

    assert sorted(resumed) == sorted(ids[n] for n in names if lane_for(n, lanes) == lane)
