"""The monitor: refresh observed power state, report drift, optionally correct it.

``powerq.monitor`` (beat, control queue) picks nodes whose observation is due
and rings each one's *own lane* with ``powerq.refresh``, so a refresh never
overlaps a power action on that node. A node with an outstanding request is
skipped (its executor is reading the BMC anyway). Nodes in ``power_fault`` are
re-checked less often and cleared when their BMC answers again.

Drift (observed differs from desired) is recorded as an event. With
``POWERQ_ENFORCE_DESIRED=true`` a correcting request (actor ``monitor``) is
filed for a drifted node with no outstanding request that is neither in
maintenance nor in power_fault. Nodes in maintenance are never corrected.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session

from powerq.audit import record_event
from powerq.bmc import driver_for
from powerq.bmc.base import BmcError
from powerq.config import get_settings
from powerq.db import db_now, session_scope
from powerq.errors import ConflictingRequest
from powerq.intents import request_power
from powerq.inventory import bmc_target
from powerq.models import Node, PowerRequest
from powerq.states import OUTSTANDING_STATUSES, Action, DesiredPowerState, PowerState
from powerq.tasks.app import app
from powerq.tasks.dispatch import dispatch_request
from powerq.tasks.routing import lane_for, lane_queue

log = logging.getLogger(__name__)

ACTOR = "monitor"
BATCH_SIZE = 1000


@app.task(name="powerq.monitor", ignore_result=True)  # type: ignore[untyped-decorator]
def monitor() -> int:
    """Beat entry point: ring the lanes of every node whose refresh is due."""
    due = due_for_refresh(get_settings().monitor_interval_s)
    lanes = get_settings().lanes
    for node_id, name in due:
        queue = lane_queue(lane_for(name, lanes))
        refresh.apply_async(args=[node_id], queue=queue, routing_key=queue)
    return len(due)


def due_for_refresh(interval_s: float, limit: int = BATCH_SIZE) -> list[tuple[int, str]]:
    """Nodes to refresh now: stale observation, nothing outstanding, faults less often.

    Their ``last_checked_at`` is bumped at once so the next monitor run does not
    pick them again while their refresh waits in the lane.
    """
    fault_recheck = timedelta(seconds=get_settings().fault_recheck_s)
    with session_scope() as session:
        now = db_now(session)
        busy = exists().where(
            PowerRequest.node_id == Node.id, PowerRequest.status.in_(OUTSTANDING_STATUSES)
        )
        stale = or_(
            Node.last_checked_at.is_(None),
            and_(~Node.power_fault, Node.last_checked_at < now - timedelta(seconds=interval_s)),
            and_(Node.power_fault, Node.last_checked_at < now - fault_recheck),
        )
        rows = session.execute(
            select(Node.id, Node.name)
            .where(stale, ~busy, Node.deleted_at.is_(None))
            .order_by(Node.last_checked_at.nulls_first())
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        ids = [row[0] for row in rows]
        if ids:
            session.execute(update(Node).where(Node.id.in_(ids)).values(last_checked_at=now))
    return [(row[0], row[1]) for row in rows]


@app.task(name="powerq.refresh", ignore_result=True)  # type: ignore[untyped-decorator]
def refresh(node_id: int) -> None:
    """Read one node's power state (runs on the node's lane; the message holds only its id)."""
    refresh_node(node_id)


def refresh_node(node_id: int) -> PowerState | None:
    """Read the BMC, store the observation, report (and maybe correct) drift.

    Returns the state read, or None when the node was skipped or unreachable.
    """
    with session_scope() as session:
        node = session.get(Node, node_id)
        if node is None or node.deleted_at is not None or _has_outstanding(session, node_id):
            return None
        target = bmc_target(node)
        read_started = db_now(session)
    try:
        state = driver_for(target).get_power_state()
    except BmcError as exc:
        _record_unreachable(node_id, str(exc))
        return None
    _record_refresh(node_id, state, read_started)
    return state


def _has_outstanding(session: Session, node_id: int) -> bool:
    return (
        session.scalar(
            select(PowerRequest.id)
            .where(PowerRequest.node_id == node_id, PowerRequest.status.in_(OUTSTANDING_STATUSES))
            .limit(1)
        )
        is not None
    )


def _record_unreachable(node_id: int, error: str) -> None:
    with session_scope() as session:
        session.execute(
            update(Node).where(Node.id == node_id).values(last_error=f"monitor: {error}")
        )


def _record_refresh(node_id: int, state: PowerState, read_started: datetime) -> None:
    """Store the read; clear a power fault; report drift and maybe correct it.

    The read is stamped with ``read_started`` (just before the BMC was asked).
    A read that a newer observation overtook (a request's step read the BMC
    meanwhile) is dropped, and so is drift judged while a request is outstanding.
    """
    correcting = None
    with session_scope() as session:
        node = session.get(Node, node_id, with_for_update=True)
        if node is None:
            return
        if node.power_state_at is not None and node.power_state_at >= read_started:
            return  # overtaken by a newer read
        node.power_state, node.power_state_at = state, read_started
        node.last_checked_at = db_now(session)
        if _has_outstanding(session, node_id):
            return
        if node.power_fault:
            _clear_fault(session, node)
        if _drifted(node):
            correcting = _report_drift(session, node, state)
    if correcting is not None:
        dispatch_request(correcting[0], correcting[1])


def _clear_fault(session: Session, node: Node) -> None:
    node.power_fault = False
    node.power_fault_reason = None
    node.consecutive_failures = 0
    record_event(
        session,
        node_id=node.id,
        kind="power_fault_cleared",
        actor=ACTOR,
        message="the BMC answers again",
    )


def _drifted(node: Node) -> bool:
    if node.desired_power_state is None or node.power_state is PowerState.UNKNOWN:
        return False
    return node.power_state.value != node.desired_power_state.value


def _report_drift(session: Session, node: Node, state: PowerState) -> tuple[uuid.UUID, str] | None:
    """Record a drift event; file a correcting request when enforcement allows it."""
    desired = node.desired_power_state
    assert desired is not None
    record_event(
        session,
        node_id=node.id,
        kind="drift",
        actor=ACTOR,
        message=f"observed {state.value}, desired {desired.value}",
        detail={"observed": state.value, "desired": desired.value},
    )
    if not get_settings().enforce_desired or node.maintenance or node.power_fault:
        return None
    action = Action.ON if desired is DesiredPowerState.ON else Action.OFF
    try:
        intent = request_power(session, node, action, actor=ACTOR)
    except ConflictingRequest:
        return None
    return (intent.request.id, node.name) if intent.created else None
