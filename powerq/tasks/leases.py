"""Claims and fenced writes on power requests: the database side of a step.

A worker claims a request with one conditional UPDATE that sets a lease and,
after a lost lease, increments ``attempt`` (the fencing token). Every later
write names that attempt, so a zombie worker's late write matches no row and
changes nothing. Each function here is one statement in its own short
transaction; none is ever open across a BMC call.

While a run goes on, every write renews its lease. When the next step is not
due within the run, the attempt *parks*: its lease is set to the time the next
step is due and a continuation message carries the attempt number, whose claim
keeps the attempt (it is the same attempt going on, not a takeover). A request
whose continuation was lost (Redis flushed, worker killed) is found by the
sweeper once its lease has been expired for a grace period; that claim is a
takeover and increments ``attempt``.

A run that loses the database mid-way hands its lease on the same way: its
retry names the attempt and the lease it last wrote, and takes the request
back as soon as the database answers, if nothing was written since. If the
statement that failed did commit (its answer was lost), the lease differs
and the request waits for its lease to run out, as after any lost worker.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import Row, func, select, text, update

from powerq.bmc.base import BmcTarget
from powerq.db import db_now, run_statement, session_scope
from powerq.errors import ConfigError
from powerq.health import SUCCESS_WORDING, record_failure
from powerq.inventory import BmcColumns, bmc_target
from powerq.models import Node, PowerRequest
from powerq.states import (
    Action,
    BootDevice,
    Evidence,
    PowerState,
    RequestStatus,
    Step,
)
from powerq.tasks import lane_fence
from powerq.tasks.verify import Learned

E = TypeVar("E", bound=Enum)

ACTOR = "executor"
# A continuation may be claimed this early: a worker clock slightly ahead of
# PostgreSQL's must not drop the chain. Far below any active step's lease.
CLAIM_TOLERANCE = timedelta(seconds=2)
# A configuration problem is not the BMC's: it never raises power_fault.
_NOT_A_BMC_FAULT = 2**31
# A node's transitions are learned from its last few verified ones.
LEARN_FROM = 10


@dataclass(frozen=True)
class Claim:
    """What one claimed attempt knows about its request (re-read at every claim).

    ``now`` is PostgreSQL's time at the last statement, taken locally at
    ``now_mono`` (:func:`time.monotonic`); :meth:`clock` carries it forward.
    """

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
    # what the node's last verified offs / ons took (absent: not learned yet)
    learned: dict[Action, Learned] = field(default_factory=dict)
    # seconds after the send when a read last saw the old state (this run)
    waited_s: float = 0.0
    # the lease this attempt last wrote (a retry after a lost database names it)
    lease_until: datetime | None = None
    now_mono: float = field(default_factory=time.monotonic)

    def clock(self) -> datetime:
        """PostgreSQL's time now, from the last statement's and the local monotonic clock."""
        return self.now + timedelta(seconds=time.monotonic() - self.now_mono)

    def at_now(self) -> Claim:
        """This claim with ``now`` brought forward (call just before a BMC read)."""
        return replace(self, now=self.clock(), now_mono=time.monotonic())


class Parked(NamedTuple):
    """What a continuation message names: the attempt that parked (or lost the
    database), and the lease it last wrote. Only the first claim after that
    write can match both; it may take the request at once, lease or not."""

    attempt: int | None
    until: datetime | None


def claim(
    request_id: uuid.UUID, lease_s: float, *, continuing: Parked | None = None
) -> Claim | None:
    """Take the request for one attempt, or return None if it is not ours to run.

    One statement. Claimable: ``pending`` (and due), or ``running`` with an
    expired lease. The claim sets ``running`` and leases the request for
    ``lease_s``; the first claim also fixes ``started_at``/``deadline_at`` and
    records the ``started`` event. ``attempt`` (the fencing token) goes up by
    one, except for the continuation of a parked attempt (``continuing``),
    when the request still holds exactly the lease it was parked with: it
    counts claims after a lost lease, not scheduled checks. Such a
    continuation may claim before that lease ends (the attempt that wrote it
    has stopped). A continuation delivered twice, or one that arrives after
    any other claim, is a takeover once the lease has run out.

    A request whose BMC credentials cannot be decrypted (this host's
    ``POWERQ_SECRET_KEY`` is not the one they were stored with) cannot run
    anywhere with this key: it is failed at once with that reason, the node's
    ``last_error`` says so, and None is returned.

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    row = run_statement(
        _CLAIM,
        {
            "request_id": request_id,
            "lease_s": lease_s,
            "tolerance_s": CLAIM_TOLERANCE.total_seconds(),
            "continuing": continuing.attempt if continuing else None,
            "parked_until": continuing.until if continuing else None,
            **lane_fence.params(),
        },
    )
    if row is None:
        return None
    try:
        target = bmc_target(cast(BmcColumns, row))
    except ConfigError as exc:
        _fail_unrunnable(request_id, str(exc))
        return None
    return _snapshot(row, target)


# The claim, the first claim's event, the node and the learned transition times
# in one round trip.
_CLAIM = text(
    """
    WITH claimed AS (
        UPDATE power_requests r
        SET status = 'running',
            attempt = CASE WHEN r.status = 'running' AND r.attempt = :continuing
                                AND r.lease_expires_at = :parked_until
                           THEN r.attempt ELSE r.attempt + 1 END,
            lease_expires_at = now() + make_interval(secs => :lease_s),
            started_at = coalesce(r.started_at, now()),
            deadline_at = coalesce(r.deadline_at, now() + make_interval(secs => r.deadline_s)),
            lane = CAST(:fence_lane AS integer), lane_fence = CAST(:fence AS bigint),
            updated_at = now()
        WHERE r.id = :request_id AND (
            (r.status = 'pending' AND NOT r.held
             AND (r.not_before IS NULL OR r.not_before <= now())
             AND (r.start_by IS NULL OR r.start_by > now()))
            OR (r.status = 'running'
                AND r.lease_expires_at <= now() + make_interval(secs => :tolerance_s))
            OR (r.status = 'running' AND r.attempt = :continuing
                AND r.lease_expires_at = :parked_until))
          AND {lane_fence}
        RETURNING r.*
    ), started AS (
        INSERT INTO power_events (node_id, request_id, kind, actor, message, detail)
        SELECT node_id, id, 'started', 'executor', action::text || ' claimed by a worker', '{}'
        FROM claimed WHERE started_at = now()
    )
    SELECT c.id, c.attempt, c.action, c.next_step, c.started_at, c.deadline_at, c.checks,
           c.transient_errors, c.soft_fallback, c.observed_before, c.command_sent,
           c.command_sent_at, c.command_acked_at, c.fallback_sent_at, c.transition_seen_at,
           c.boot_device, c.boot_persistent, c.boot_set_at, c.lease_expires_at, now() AS now,
           n.id AS node_id, n.name, n.driver, n.bmc_address, n.bmc_port, n.bmc_username,
           n.bmc_password_encrypted, n.bmc_system, n.verify_tls, n.ca_bundle,
           n.ipmi_cipher_suite, n.ipmi_privilege, n.ipmi_kg_encrypted,
           learned.off_lower, learned.off_upper, learned.on_lower, learned.on_upper
    FROM claimed c JOIN nodes n ON n.id = c.node_id
    LEFT JOIN LATERAL (
        SELECT max(lower) FILTER (WHERE command = 'off') AS off_lower,
               min(upper) FILTER (WHERE command = 'off') AS off_upper,
               max(lower) FILTER (WHERE command = 'on') AS on_lower,
               min(upper) FILTER (WHERE command = 'on') AS on_upper
        FROM (SELECT detail->>'command' AS command,
                     (detail->'took_s'->>0)::float8 AS lower,
                     (detail->'took_s'->>1)::float8 AS upper
              FROM power_events
              WHERE node_id = c.node_id AND kind = 'succeeded' AND detail ? 'took_s'
              ORDER BY created_at DESC LIMIT :learn_from) recent
    ) learned ON true
    """.replace("{lane_fence}", lane_fence.CURRENT)
).bindparams(learn_from=LEARN_FROM)


def _fail_unrunnable(request_id: uuid.UUID, reason: str) -> None:
    """Fail a just-claimed request that no worker with this configuration can run."""
    with session_scope() as session:
        request = session.get(PowerRequest, request_id, with_for_update=True)
        assert request is not None
        request.status = RequestStatus.FAILED
        request.finished_at = db_now(session)
        request.lease_expires_at = None
        request.error = reason
        node = session.get(Node, request.node_id, with_for_update=True)
        assert node is not None
        record_failure(
            session,
            node,
            request_id=request.id,
            error=reason,
            threshold=_NOT_A_BMC_FAULT,
            actor=ACTOR,
        )


def _optional(kind: type[E], value: str | None) -> E | None:
    return None if value is None else kind(value)


def _snapshot(row: Row[Any], target: BmcTarget) -> Claim:
    return Claim(
        request_id=row.id,
        attempt=row.attempt,
        action=Action(row.action),
        next_step=Step(row.next_step),
        node_id=row.node_id,
        node_name=row.name,
        target=target,
        started_at=row.started_at,
        deadline_at=row.deadline_at,
        now=row.now,
        checks=row.checks,
        transient_errors=row.transient_errors,
        soft_fallback=row.soft_fallback,
        observed_before=_optional(PowerState, row.observed_before),
        command_sent=_optional(Action, row.command_sent),
        command_sent_at=row.command_sent_at,
        command_acked_at=row.command_acked_at,
        fallback_sent_at=row.fallback_sent_at,
        transition_seen_at=row.transition_seen_at,
        boot_device=_optional(BootDevice, row.boot_device),
        boot_persistent=row.boot_persistent,
        boot_set_at=row.boot_set_at,
        learned=_learned(row),
        lease_until=row.lease_expires_at,
    )


def _learned(row: Row[Any]) -> dict[Action, Learned]:
    bounds = {
        Action.OFF: (row.off_lower, row.off_upper),
        Action.ON: (row.on_lower, row.on_upper),
    }
    return {
        command: Learned(lower=min(lower, upper), upper=upper)
        for command, (lower, upper) in bounds.items()
        if lower is not None and upper is not None
    }


def park(c: Claim, *, next_step: Step, delay_s: float) -> datetime | None:
    """Write the claim's progress and hand the lease over until the next step is due.

    The lease ends when the next step is due (``delay_s`` from now), so that
    step's claim, a continuation of this attempt, can take it; if its message
    is lost, the sweeper finds the expired lease. Returns the parked lease
    (the continuation names it), or None when a newer attempt has taken over
    (this one must stop).

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    until = func.now() + timedelta(seconds=delay_s)
    statement = (
        update(PowerRequest)
        .where(
            PowerRequest.id == c.request_id,
            PowerRequest.attempt == c.attempt,
            PowerRequest.status == RequestStatus.RUNNING,
        )
        .values(
            lease_expires_at=until,
            next_step=next_step,
            checks=c.checks,
            transient_errors=c.transient_errors,
            observed_before=c.observed_before,
            command_sent=c.command_sent,
            command_sent_at=c.command_sent_at,
            command_acked_at=c.command_acked_at,
            fallback_sent_at=c.fallback_sent_at,
            transition_seen_at=c.transition_seen_at,
            boot_set_at=c.boot_set_at,
            deadline_at=c.deadline_at,
        )
        .returning(PowerRequest.lease_expires_at)
    )
    row = run_statement(statement)
    return None if row is None else row.lease_expires_at


_MARK = text(
    """
    WITH req AS (
        UPDATE power_requests
        SET command_sent = :command,
            command_sent_at = CASE WHEN :fallback THEN command_sent_at ELSE now() END,
            fallback_sent_at = CASE WHEN :fallback THEN now() ELSE fallback_sent_at END,
            command_acked_at = NULL,
            observed_before = coalesce(observed_before, CAST(:before AS power_state)),
            transition_seen_at = coalesce(:transition_seen_at, transition_seen_at),
            boot_set_at = coalesce(:boot_set_at, boot_set_at),
            deadline_at = :deadline_at,
            lease_expires_at = now() + make_interval(secs => :lease_s),
            updated_at = now()
        WHERE id = :request_id AND attempt = :attempt AND status = 'running'
          AND command_sent_at IS NOT DISTINCT FROM :seen_sent_at
          AND fallback_sent_at IS NOT DISTINCT FROM :seen_fallback_at
          AND {lane_fence}
        RETURNING id, node_id, lease_expires_at
    ), observed AS (
        UPDATE nodes
        SET power_state = CAST(:state AS power_state), power_state_at = :read_started,
            last_checked_at = now()
        WHERE id = (SELECT node_id FROM req) AND CAST(:state AS power_state) IS NOT NULL
          AND (power_state_at IS NULL OR power_state_at < :read_started)
    ), sent AS (
        INSERT INTO power_events (node_id, request_id, kind, actor, message, detail)
        SELECT node_id, id, 'command_sent', 'executor', :message, CAST(:detail AS jsonb) FROM req
    )
    SELECT now() AS now, EXISTS (SELECT 1 FROM req) AS owned,
           (SELECT lease_expires_at FROM req) AS lease_until
    """.replace("{lane_fence}", lane_fence.CURRENT)
)


def mark_command_sent(
    c: Claim,
    command: Action,
    *,
    fallback: bool = False,
    read: PowerState | None = None,
    lease_s: float,
) -> Claim | None:
    """Write ``command_sent_at`` (``fallback_sent_at`` for a soft_off's hard-off
    fallback) *before* the command goes out: the send-once rule.

    The mark is a compare-and-set on the marks this claim last saw: if another
    run of the same attempt marked meanwhile, nothing is written and None is
    returned, so no command is sent twice even then.

    One statement, which also stores ``read`` (the read that called for the
    command, made at ``c.now``) as the node's observed state, and the claim's
    progress not yet written (``observed_before`` from the query step,
    ``transition_seen_at`` of a cycle's off phase, ``boot_set_at``, the
    deadline a hard-off fallback brings).
    Returns the updated claim, or None if this attempt was fenced out.

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    row = run_statement(
        _MARK,
        {
            "request_id": c.request_id,
            "attempt": c.attempt,
            "node_id": c.node_id,
            "command": command.value,
            "fallback": fallback,
            "state": read.value if read is not None else None,
            "before": c.observed_before.value if c.observed_before is not None else None,
            "read_started": c.now,
            "transition_seen_at": c.transition_seen_at,
            "boot_set_at": c.boot_set_at,
            "deadline_at": c.deadline_at,
            "seen_sent_at": c.command_sent_at,
            "seen_fallback_at": c.fallback_sent_at,
            "lease_s": lease_s,
            "message": f"{command.value} sent to {c.target.label}",
            "detail": json.dumps({"command": command.value, "attempt": c.attempt}),
            **lane_fence.params(),
        },
    )
    assert row is not None
    now = row.now
    if not row.owned:
        return None
    c = replace(
        c,
        now=now,
        now_mono=time.monotonic(),
        command_sent=command,
        command_acked_at=None,
        lease_until=row.lease_until,
    )
    return replace(c, fallback_sent_at=now) if fallback else replace(c, command_sent_at=now)


_OBSERVE = text(
    """
    WITH owner AS (
        UPDATE power_requests
        SET lease_expires_at = now() + make_interval(secs => :lease_s),
            command_acked_at = coalesce(command_acked_at, :acked_at)
        WHERE id = :request_id AND attempt = :attempt AND status = 'running'
        RETURNING lease_expires_at
    ), observed AS (
        UPDATE nodes
        SET power_state = CAST(:state AS power_state), power_state_at = :read_started,
            last_checked_at = now()
        WHERE id = :node_id AND EXISTS (SELECT 1 FROM owner)
          AND CAST(:state AS power_state) IS NOT NULL
          AND (power_state_at IS NULL OR power_state_at < :read_started)
    )
    SELECT now() AS now, EXISTS (SELECT 1 FROM owner) AS owned,
           (SELECT lease_expires_at FROM owner) AS lease_until
    """
)


def record_observation(c: Claim, state: PowerState | None, *, lease_s: float) -> Claim | None:
    """Store a BMC read made by attempt ``c`` as the node's observed state (None:
    no read to store), renew the lease, and keep the claim's ``command_acked_at``
    if none is recorded yet.

    One statement, fenced: nothing is written unless ``c`` still owns its
    request, and an older read never overwrites a newer one. The read is
    stamped with ``c.now``, PostgreSQL's time just *before* the BMC was asked
    (the state was that at least that recently). Returns the claim with
    PostgreSQL's time now, or None when ``c`` no longer owns the request
    (stop, write nothing more).

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    row = run_statement(
        _OBSERVE,
        {
            "request_id": c.request_id,
            "attempt": c.attempt,
            "state": state.value if state is not None else None,
            "read_started": c.now,
            "node_id": c.node_id,
            "lease_s": lease_s,
            "acked_at": c.command_acked_at,
        },
    )
    assert row is not None
    if not row.owned:
        return None
    return replace(c, now=row.now, now_mono=time.monotonic(), lease_until=row.lease_until)


# Closing a request: the request row, the node's observed state and health,
# and the events, in one statement. ``was`` is the node before this statement.
_FINISH = text(
    """
    WITH req AS (
        UPDATE power_requests
        SET status = CAST(:status AS request_status), finished_at = now(),
            lease_expires_at = NULL, error = :error,
            observed_after = coalesce(CAST(:state AS power_state), observed_after),
            evidence = coalesce(:evidence, evidence),
            command_acked_at = coalesce(command_acked_at, :acked_at),
            checks = :checks,
            updated_at = now()
        WHERE id = :request_id AND attempt = :attempt AND status = 'running'
        RETURNING id, node_id, batch_id
    ), was AS (
        SELECT power_fault FROM nodes WHERE id = :node_id FOR UPDATE
    ), health AS (
        UPDATE nodes n
        SET power_state = CASE WHEN :fresh_check AND (n.power_state_at IS NULL
                                    OR n.power_state_at < :read_started)
                               THEN CAST(:state AS power_state) ELSE n.power_state END,
            power_state_at = CASE WHEN :fresh_check AND (n.power_state_at IS NULL
                                    OR n.power_state_at < :read_started)
                                  THEN :read_started ELSE n.power_state_at END,
            last_checked_at = CASE WHEN :fresh_check THEN now() ELSE n.last_checked_at END,
            consecutive_failures = CASE WHEN :succeeded THEN 0
                                        ELSE n.consecutive_failures + 1 END,
            last_error = CASE WHEN :succeeded THEN NULL ELSE :error END,
            power_fault = CASE WHEN :succeeded THEN false
                               ELSE n.power_fault OR n.consecutive_failures + 1 >= :threshold END,
            power_fault_reason = CASE
                WHEN :succeeded THEN NULL
                WHEN NOT n.power_fault AND n.consecutive_failures + 1 >= :threshold
                THEN (n.consecutive_failures + 1)::text
                     || ' consecutive failed power requests; last: ' || coalesce(:error, '')
                ELSE n.power_fault_reason END,
            power_fault_at = CASE
                WHEN NOT :succeeded AND NOT n.power_fault
                     AND n.consecutive_failures + 1 >= :threshold
                THEN now() ELSE n.power_fault_at END,
            updated_at = now()
        FROM req, was
        WHERE n.id = req.node_id
        RETURNING n.id, was.power_fault AS was_faulted,
                  NOT :succeeded AND n.power_fault AND NOT was.power_fault AS raises,
                  n.power_fault_reason
    ), events AS (
        INSERT INTO power_events (node_id, request_id, kind, actor, message, detail)
        SELECT h.id, :request_id, e.kind, 'executor', e.message, CAST(e.detail AS jsonb)
        FROM health h CROSS JOIN LATERAL (VALUES
            (1, 'power_fault_cleared', 'a successful request cleared the power fault', '{}',
             :succeeded AND h.was_faulted),
            (2, :kind, :message, :detail, true),
            (3, 'power_fault', h.power_fault_reason, '{}', h.raises)
        ) AS e(position, kind, message, detail, wanted)
        WHERE e.wanted
        ORDER BY e.position
    )
    SELECT EXISTS (SELECT 1 FROM req) AS owned,
           (SELECT r.batch_id FROM req r WHERE EXISTS (
                SELECT 1 FROM power_requests h
                WHERE h.batch_id = r.batch_id AND h.held AND h.status = 'pending'))
               AS waiting_batch
    """
)


@dataclass(frozen=True)
class Finished:
    """What closing a request did."""

    owned: bool  # False: a newer attempt owns the request; nothing was written
    waiting_batch: uuid.UUID | None  # its batch still holds requests back


def finish(
    c: Claim,
    status: RequestStatus,
    *,
    error: str | None = None,
    observed: PowerState | None = None,
    evidence: Evidence | None = None,
    acked_at: datetime | None = None,
    took_s: tuple[float, float] | None = None,
    fault_threshold: int,
) -> Finished:
    """Close the request as succeeded or failed and update the node's health.

    One statement. A success clears ``power_fault``, ``last_error`` and the
    failure count; a failure records ``last_error`` and sets ``power_fault``
    once the node has failed ``fault_threshold`` requests in a row.
    ``observed`` (a read made at ``c.now``) is stored as the node's observed
    state; ``evidence`` says what showed the outcome; ``acked_at``: when the
    BMC answered the command (kept if one was recorded already); ``took_s``:
    the bounds a verified on/off showed on its transition time (kept in the
    success event, where the next claims learn the node's timing from).

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    succeeded = status is RequestStatus.SUCCEEDED
    detail: dict[str, object] = {"evidence": evidence.value} if succeeded and evidence else {}
    if succeeded and took_s is not None and c.command_sent is not None:
        detail.update(command=c.command_sent.value, took_s=[round(t, 3) for t in took_s])
    row = run_statement(
        _FINISH,
        {
            "request_id": c.request_id,
            "attempt": c.attempt,
            "node_id": c.node_id,
            "checks": c.checks,
            "status": status.value,
            "succeeded": succeeded,
            "error": error,
            "state": observed.value if observed is not None else None,
            "fresh_check": observed is not None,
            "read_started": c.now,
            "evidence": evidence.value if evidence is not None else None,
            "acked_at": acked_at,
            "threshold": fault_threshold,
            "kind": "succeeded" if succeeded else "failed",
            "message": f"{c.action.value} {SUCCESS_WORDING[evidence]}" if succeeded else error,
            "detail": json.dumps(detail),
        },
    )
    assert row is not None
    return Finished(owned=bool(row.owned), waiting_batch=row.waiting_batch)


def current_status(request_id: uuid.UUID) -> RequestStatus | None:
    """The request's status now (None: no such request)."""
    with session_scope() as session:
        return session.scalar(select(PowerRequest.status).where(PowerRequest.id == request_id))
