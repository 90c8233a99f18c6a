"""Claims and fenced writes on power requests: the database side of a step.

A worker claims a request with one conditional UPDATE that increments
``attempt`` (the fencing token) and sets a lease. Every later write names that
attempt, so a zombie worker's late write matches no row and changes nothing.
Each function here is one short transaction; none is ever open across a BMC call.

Between steps the lease is set to the time the next step is due: the next
step's claim needs an expired lease, and a request whose chain of messages was
lost (Redis flushed, worker killed) is found by the sweeper once its lease has
been expired for a grace period.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from powerq.audit import record_event
from powerq.bmc.base import BmcTarget
from powerq.db import db_now, session_scope
from powerq.errors import ConfigError
from powerq.health import record_failure, record_success
from powerq.inventory import bmc_target
from powerq.models import Node, PowerRequest
from powerq.states import Action, BootDevice, Evidence, PowerState, RequestStatus, Step

ACTOR = "executor"
# A continuation may be claimed this early: a worker clock slightly ahead of
# PostgreSQL's must not drop the chain. Far below any active step's lease.
CLAIM_TOLERANCE = timedelta(seconds=2)
# A configuration problem is not the BMC's: it never raises power_fault.
_NOT_A_BMC_FAULT = 2**31


@dataclass(frozen=True)
class Claim:
    """What one claimed attempt knows about its request (re-read at every claim)."""

    request_id: uuid.UUID
    attempt: int
    action: Action
    next_step: Step
    node_id: int
    node_name: str
    target: BmcTarget
    started_at: datetime
    deadline_at: datetime
    now: datetime
    checks: int
    transient_errors: int
    soft_fallback: bool
    observed_before: PowerState | None
    command_sent: Action | None
    command_sent_at: datetime | None
    command_acked_at: datetime | None
    fallback_sent_at: datetime | None
    transition_seen_at: datetime | None
    boot_device: BootDevice | None = None
    boot_persistent: bool = False
    boot_set_at: datetime | None = None


def claim(request_id: uuid.UUID, lease_s: float) -> Claim | None:
    """Take the request for one attempt, or return None if it is not ours to run.

    Claimable: ``pending`` (and due), or ``running`` with an expired lease.
    The claim sets ``running``, increments ``attempt`` and leases the request
    for ``lease_s``; the first claim also fixes ``started_at``/``deadline_at``.

    A request whose BMC credentials cannot be decrypted (this host's
    ``POWERQ_SECRET_KEY`` is not the one they were stored with) cannot run
    anywhere with this key: it is failed at once with that reason, the node's
    ``last_error`` says so, and None is returned.
    """
    with session_scope() as session:
        now = db_now(session)
        row = session.execute(_claim_statement(request_id, now, lease_s)).first()
        if row is None:
            return None
        request = session.get(PowerRequest, request_id, populate_existing=True)
        assert request is not None
        if request.attempt == 1:
            record_event(
                session,
                node_id=request.node_id,
                request_id=request.id,
                kind="started",
                actor=ACTOR,
                message=f"{request.action.value} claimed by a worker",
            )
        try:
            return _snapshot(request, request.node, now)
        except ConfigError as exc:
            _fail_unrunnable(session, request, now, str(exc))
            return None


def _fail_unrunnable(session: Session, request: PowerRequest, now: datetime, reason: str) -> None:
    """Fail a just-claimed request that no worker with this configuration can run."""
    request.status = RequestStatus.FAILED
    request.finished_at = now
    request.lease_expires_at = None
    request.error = reason
    node = session.get(Node, request.node_id, with_for_update=True)
    assert node is not None
    record_failure(
        session, node, request_id=request.id, error=reason, threshold=_NOT_A_BMC_FAULT, actor=ACTOR
    )


def _claim_statement(request_id: uuid.UUID, now: datetime, lease_s: float) -> Any:
    claimable = or_(
        and_(
            PowerRequest.status == RequestStatus.PENDING,
            ~PowerRequest.held,
            or_(PowerRequest.not_before.is_(None), PowerRequest.not_before <= now),
            # past its batch's deadline it never starts (the sweep fails it)
            or_(PowerRequest.start_by.is_(None), PowerRequest.start_by > now),
        ),
        and_(
            PowerRequest.status == RequestStatus.RUNNING,
            PowerRequest.lease_expires_at <= now + CLAIM_TOLERANCE,
        ),
    )
    return (
        update(PowerRequest)
        .where(PowerRequest.id == request_id, claimable)
        .values(
            status=RequestStatus.RUNNING,
            attempt=PowerRequest.attempt + 1,
            lease_expires_at=now + timedelta(seconds=lease_s),
            started_at=func.coalesce(PowerRequest.started_at, now),
            deadline_at=func.coalesce(
                PowerRequest.deadline_at,
                now + func.make_interval(0, 0, 0, 0, 0, 0, PowerRequest.deadline_s),
            ),
        )
        .returning(PowerRequest.id)
    )


def _snapshot(request: PowerRequest, node: Node, now: datetime) -> Claim:
    assert request.started_at is not None and request.deadline_at is not None
    return Claim(
        request_id=request.id,
        attempt=request.attempt,
        action=request.action,
        next_step=request.next_step,
        node_id=node.id,
        node_name=node.name,
        target=bmc_target(node),
        started_at=request.started_at,
        deadline_at=request.deadline_at,
        now=now,
        checks=request.checks,
        transient_errors=request.transient_errors,
        soft_fallback=request.soft_fallback,
        observed_before=request.observed_before,
        command_sent=request.command_sent,
        command_sent_at=request.command_sent_at,
        command_acked_at=request.command_acked_at,
        fallback_sent_at=request.fallback_sent_at,
        transition_seen_at=request.transition_seen_at,
        boot_device=BootDevice(request.boot_device) if request.boot_device else None,
        boot_persistent=request.boot_persistent,
        boot_set_at=request.boot_set_at,
    )


def _fenced(session: Session, c: Claim, **values: Any) -> bool:
    """Update the request only if ``c`` is still the current running attempt."""
    result = session.execute(
        update(PowerRequest)
        .where(
            PowerRequest.id == c.request_id,
            PowerRequest.attempt == c.attempt,
            PowerRequest.status == RequestStatus.RUNNING,
        )
        .values(**values)
        .returning(PowerRequest.id)
    ).first()
    return result is not None


def advance(c: Claim, *, delay_s: float, acked: bool = False, **values: Any) -> Claim | None:
    """Record progress and keep (delay 0) or hand over (delay > 0) the lease.

    With ``delay_s == 0`` the same attempt goes on at once and its lease is
    renewed; otherwise the lease ends when the next step is due, so that
    step's claim (on the same lane) can take it. ``acked``: the BMC answered
    the command just sent (``command_acked_at`` is stamped). Returns the
    updated claim, or None when a newer attempt has taken over (this one must stop).
    """
    with session_scope() as session:
        now = db_now(session)
        lease_until = now + timedelta(seconds=delay_s) if delay_s > 0 else None
        if lease_until is not None:
            values["lease_expires_at"] = lease_until
        if acked:
            values["command_acked_at"] = now
        if not _fenced(session, c, **values):
            return None
    fields = {k: v for k, v in values.items() if k in Claim.__dataclass_fields__}
    return replace(c, now=now, **fields)


def mark_command_sent(c: Claim, command: Action, *, fallback: bool = False) -> Claim | None:
    """Write ``command_sent_at`` (``fallback_sent_at`` for a soft_off's hard-off
    fallback) *before* the command goes out: the send-once rule.

    Returns the updated claim, or None if this attempt was fenced out.
    """
    with session_scope() as session:
        now = db_now(session)
        column = "fallback_sent_at" if fallback else "command_sent_at"
        values: dict[str, Any] = {column: now, "command_sent": command, "command_acked_at": None}
        if not _fenced(session, c, **values):
            return None
        record_event(
            session,
            node_id=c.node_id,
            request_id=c.request_id,
            kind="command_sent",
            actor=ACTOR,
            message=f"{command.value} sent to {c.target.label}",
            detail={"command": command.value, "attempt": c.attempt},
        )
    if fallback:
        return replace(
            c, now=now, command_sent=command, fallback_sent_at=now, command_acked_at=None
        )
    return replace(c, now=now, command_sent=command, command_sent_at=now, command_acked_at=None)


_OBSERVE = text(
    """
    WITH owner AS (
        SELECT 1 FROM power_requests
        WHERE id = :request_id AND attempt = :attempt AND status = 'running'
    ), observed AS (
        UPDATE nodes
        SET power_state = :state, power_state_at = :read_started, last_checked_at = now()
        WHERE id = :node_id AND EXISTS (SELECT 1 FROM owner)
          AND (power_state_at IS NULL OR power_state_at < :read_started)
        RETURNING 1
    )
    SELECT now(), EXISTS (SELECT 1 FROM owner)
    """
)


def record_observation(c: Claim, state: PowerState) -> tuple[datetime, bool]:
    """Store a BMC read made by attempt ``c`` as the node's observed state.

    One statement, fenced: nothing is written unless ``c`` still owns its
    request, and an older read never overwrites a newer one. The read is
    stamped with ``c.now``, PostgreSQL's time just *before* the BMC was asked
    (the state was that at least that recently). Returns PostgreSQL's time now
    and whether ``c`` still owns the request (False: stop, write nothing more).
    """
    with session_scope() as session:
        row = session.execute(
            _OBSERVE,
            {
                "request_id": c.request_id,
                "attempt": c.attempt,
                "state": state.value,
                "read_started": c.now,
                "node_id": c.node_id,
            },
        ).one()
    return row[0], bool(row[1])


def finish(
    c: Claim,
    status: RequestStatus,
    *,
    error: str | None = None,
    observed: PowerState | None = None,
    evidence: Evidence | None = None,
    acked: bool = False,
    fault_threshold: int,
) -> bool:
    """Close the request as succeeded or failed and update the node's health.

    A success clears ``power_fault``, ``last_error`` and the failure count; a
    failure records ``last_error`` and sets ``power_fault`` once the node has
    failed ``fault_threshold`` requests in a row. ``evidence`` says what showed
    the outcome; ``acked`` stamps ``command_acked_at`` (the BMC answered the
    command just sent). Returns False when this attempt was fenced out (nothing
    was written).
    """
    with session_scope() as session:
        now = db_now(session)
        values: dict[str, Any] = {
            "status": status,
            "finished_at": now,
            "lease_expires_at": None,
            "error": error,
        }
        if observed is not None:
            values["observed_after"] = observed
        if evidence is not None:
            values["evidence"] = evidence.value
        if acked:
            values["command_acked_at"] = now
        if not _fenced(session, c, **values):
            return False
        node = session.get(Node, c.node_id, with_for_update=True)
        assert node is not None
        if status is RequestStatus.SUCCEEDED:
            record_success(
                session,
                node,
                request_id=c.request_id,
                action=c.action,
                actor=ACTOR,
                evidence=evidence,
            )
        else:
            record_failure(
                session,
                node,
                request_id=c.request_id,
                error=error,
                threshold=fault_threshold,
                actor=ACTOR,
            )
    return True


def current_status(request_id: uuid.UUID) -> RequestStatus | None:
    """The request's status now (None: no such request)."""
    with session_scope() as session:
        return session.scalar(select(PowerRequest.status).where(PowerRequest.id == request_id))
