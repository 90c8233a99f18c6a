"""The sweeper: PostgreSQL brings back every request Redis may have dropped.

Redis is only a doorbell (here it keeps nothing on disk), so after any outage
(worker killed, broker flushed or restarted, link lost) the outstanding work is
found in the database and its lane is rung again:

* pending requests that are due and were never dispatched, or were dispatched
  long enough ago that the message must be gone;
* running requests whose lease expired a grace period ago (the chain of step
  messages was lost; the next claim re-checks ``command_sent_at``, so nothing
  is sent twice);
* running requests long past their deadline that no worker could check
  (no lane worker at all): failed, with a message saying so. Normally the
  worker fails an overdue request itself, after reading the BMC.

Every scan is an indexed query over outstanding rows only, in bounded batches,
with ``FOR UPDATE SKIP LOCKED``, so two sweepers (two beats by mistake) split
the work instead of doubling it. Messages are published after commit.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from powerq.config import get_settings
from powerq.db import db_now, session_scope
from powerq.health import record_failure
from powerq.models import Node, PowerRequest
from powerq.states import Action, RequestStatus
from powerq.tasks import batch_pump
from powerq.tasks.app import app
from powerq.tasks.dispatch import send_step
from powerq.tasks.routing import lane_for, lane_queue

log = logging.getLogger(__name__)

ACTOR = "sweeper"
LEASE_GRACE = timedelta(seconds=5)
MAX_BACKOFF_DOUBLINGS = 5
# Candidates read (unlocked) per request a sweep may re-ring: room to skip busy lanes.
CANDIDATES_PER_SLOT = 4
# A worker fails an overdue request itself, after reading the BMC: that is the
# honest answer (the hardware may have got there) and the node stays busy until
# its transition is over. The sweeper only fails what no worker could look at
# for this long past its deadline (no lane worker running at all).
EXPIRE_GRACE = timedelta(minutes=5)
BATCH_SIZE = 500


@dataclass
class SweepReport:
    """What one sweep did."""

    redispatched: list[uuid.UUID] = field(default_factory=list)
    expired: list[uuid.UUID] = field(default_factory=list)
    publish_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        """Counts, for logs and the task result."""
        return {
            "redispatched": len(self.redispatched),
            "expired": len(self.expired),
            "publish_failures": self.publish_failures,
        }


@app.task(name="powerq.sweep", ignore_result=True)  # type: ignore[untyped-decorator]
def sweep() -> dict[str, int]:
    """Beat entry point: one sweep."""
    report = sweep_once()
    if report.redispatched or report.expired or report.publish_failures:
        log.info("sweep: %s", report.as_dict())
    return report.as_dict()


def sweep_once(batch_size: int = BATCH_SIZE) -> SweepReport:
    """Fail what is past its deadline, then re-dispatch what lost its message."""
    report = SweepReport()
    with session_scope() as session:
        report.expired = _expire_overdue(session, batch_size)
    report.expired += batch_pump.expire_in_sweep(batch_size)  # batch requests past start_by
    batch_pump.pump_in_sweep()  # release held batch requests (survives restarts)
    with session_scope() as session:
        due = _claim_redispatch(session, batch_size)
    for request_id, node_name, action in due:
        try:
            send_step(request_id, node_name, action=action)
            report.redispatched.append(request_id)
        except Exception as exc:  # broker down: try again next sweep
            report.publish_failures += 1
            log.warning("sweeper could not dispatch %s: %s", request_id, exc)
            break
    return report


def _needs_redispatch(now: datetime) -> Any:
    # Each ring waits twice as long as the one before (POWERQ_REDISPATCH_AFTER_S,
    # then x2, x4 ... up to x32): a lost message is found within one period, and
    # a lane without a consumer does not collect a duplicate per request per period.
    redispatch_after = get_settings().redispatch_after_s
    rings = func.least(func.greatest(PowerRequest.dispatch_count - 1, 0), MAX_BACKOFF_DOUBLINGS)
    wait = func.make_interval(0, 0, 0, 0, 0, 0, redispatch_after * func.power(2, rings))
    stale_dispatch = or_(
        PowerRequest.dispatched_at.is_(None),
        PowerRequest.dispatched_at < now - wait,
    )
    pending_due = and_(
        PowerRequest.status == RequestStatus.PENDING,
        ~PowerRequest.held,
        or_(PowerRequest.not_before.is_(None), PowerRequest.not_before <= now),
    )
    lease_lost = and_(
        PowerRequest.status == RequestStatus.RUNNING,
        PowerRequest.lease_expires_at < now - LEASE_GRACE,
        or_(
            PowerRequest.dispatched_at.is_(None),
            PowerRequest.dispatched_at < now - LEASE_GRACE,
        ),
    )
    return or_(and_(pending_due, stale_dispatch), lease_lost)


def _claim_redispatch(session: Session, limit: int) -> list[tuple[uuid.UUID, str, Action]]:
    """Mark due requests dispatched now (locked, skipping rows others hold); return
    them with their node's name (the lane) and action (shown in Flower).

    A request whose lane still has messages queued is left alone: its own
    message is most likely among them (a busy lane, not a lost message), and
    a lane that drains is looked at again by the next sweep. The lanes are
    asked before any row is locked, and busy lanes' requests do not use up the
    sweep's ``limit`` (so they cannot starve the requests of other lanes).
    """
    now = db_now(session)
    due = _needs_redispatch(now)
    candidates = session.execute(
        select(PowerRequest.id, Node.name)
        .join(Node, Node.id == PowerRequest.node_id)
        .where(PowerRequest.status.in_([RequestStatus.PENDING, RequestStatus.RUNNING]), due)
        .order_by(PowerRequest.created_at)
        .limit(limit * CANDIDATES_PER_SLOT)
    ).all()
    lanes = get_settings().lanes
    busy = backlogged_lanes({lane_for(name, lanes) for _, name in candidates})
    wanted = [rid for rid, name in candidates if lane_for(name, lanes) not in busy][:limit]
    if not wanted:
        return []
    rows = session.execute(
        select(PowerRequest.id, Node.name, PowerRequest.action)
        .join(Node, Node.id == PowerRequest.node_id)
        .where(PowerRequest.id.in_(wanted), due)
        .with_for_update(of=PowerRequest, skip_locked=True)
    ).all()
    if rows:
        session.execute(
            update(PowerRequest)
            .where(PowerRequest.id.in_([rid for rid, _, _ in rows]))
            .values(dispatched_at=now, dispatch_count=PowerRequest.dispatch_count + 1)
        )
    return [(rid, name, action) for rid, name, action in rows]


def backlogged_lanes(lanes: set[int]) -> set[int]:
    """The lanes among ``lanes`` whose Redis list still holds messages.

    Empty when the broker cannot say (not Redis, or unreachable): then every
    due request is re-rung, which is always safe (claims are fenced).
    """
    if not lanes:
        return set()
    ordered = sorted(lanes)
    try:
        with app.connection_for_write() as connection:
            pipe = connection.default_channel.client.pipeline()
            for lane in ordered:
                pipe.llen(lane_queue(lane))
            lengths = pipe.execute()
    except Exception as exc:  # any transport: no backlog information
        log.debug("lane backlog unknown: %s", exc)
        return set()
    return {lane for lane, length in zip(ordered, lengths, strict=True) if length}


def _expire_overdue(session: Session, limit: int) -> list[uuid.UUID]:
    """Fail running requests past their deadline that no worker holds."""
    now = db_now(session)
    overdue = session.scalars(
        select(PowerRequest)
        .where(
            PowerRequest.status == RequestStatus.RUNNING,
            PowerRequest.deadline_at < now - EXPIRE_GRACE,
            PowerRequest.lease_expires_at < now - LEASE_GRACE,
        )
        .limit(limit)
        .with_for_update(of=PowerRequest, skip_locked=True)
    ).all()
    for request in overdue:
        request.status = RequestStatus.FAILED
        request.finished_at = now
        request.lease_expires_at = None
        request.error = (
            f"{request.action.value} not verified by its deadline "
            f"({request.deadline_s:.0f}s): no worker could check it for "
            f"{EXPIRE_GRACE.total_seconds() / 60:.0f} minutes after that "
            "(are the lane workers running?)"
        )
        record_failure(
            session,
            request.node,
            request_id=request.id,
            error=request.error,
            threshold=get_settings().fault_threshold,
            actor=ACTOR,
        )
    return [request.id for request in overdue]
