"""Recording power intent: no Flask, no Celery, just the rules and the database.

The serialisation of intent is the partial unique index
``uq_power_requests_one_outstanding``: whichever transaction inserts first wins,
every other one gets :class:`AlreadyOutstanding` and is then answered with the
outstanding request (same action) or refused (:class:`ConflictingRequest`).
Callers commit, and only then ring the node's lane.

The API's common case, a node with nothing outstanding, is written by
:func:`record_new` in one statement (lock the live node, insert the request,
set the desired state, write the event); every other case goes through
:func:`request_power`, which keeps the same rules step by step.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Integer, TextualSelect, select, text, update
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from powerq.audit import record_event
from powerq.db import utcnow
from powerq.errors import AlreadyOutstanding, Conflict, ConflictingRequest, InvalidInput, NotFound
from powerq.models import Node, PowerEvent, PowerRequest
from powerq.states import (
    DEFAULT_DEADLINE_S,
    OUTSTANDING_STATUSES,
    Action,
    BootDevice,
    DesiredPowerState,
    RequestStatus,
    desired_after,
)

OUTSTANDING_INDEX = "uq_power_requests_one_outstanding"
# The predicate of that partial index, spelt as in the index (ON CONFLICT must infer it).
_OUTSTANDING_PREDICATE = "status IN ('pending', 'running')"
MAX_DEADLINE_S = 24 * 3600.0
# An insert can lose the race to a request that then finishes before we read
# it; a few rounds settle that, the index still decides.
_INSERT_ROUNDS = 5


@dataclass(frozen=True)
class PowerIntent:
    """What :func:`request_power` did: created a request, or found the identical one."""

    outcome: Literal["created", "existing"]
    request: PowerRequest

    @property
    def created(self) -> bool:
        """Whether a new request was written (and must be dispatched after commit)."""
        return self.outcome == "created"


def find_node(session: Session, name: str, *, lock: bool = False) -> Node:
    """The live (not deleted) node called ``name``.

    :raises NotFound: no such node.
    """
    query = select(Node).where(Node.name == name, Node.deleted_at.is_(None))
    if lock:
        query = query.with_for_update()
    node = session.scalars(query).one_or_none()
    if node is None:
        raise NotFound(f"no node named {name!r}")
    return node


def outstanding_request(session: Session, node_id: int) -> PowerRequest | None:
    """The node's pending or running request, if any."""
    return session.scalars(
        select(PowerRequest).where(
            PowerRequest.node_id == node_id,
            PowerRequest.status.in_(OUTSTANDING_STATUSES),
        )
    ).one_or_none()


def insert_outstanding(session: Session, request: PowerRequest) -> PowerRequest:
    """Insert ``request`` as the node's one outstanding request, inside a savepoint.

    :raises AlreadyOutstanding: the database already holds an outstanding
        request for that node (the partial unique index refused the row).
    """
    try:
        with session.begin_nested():
            session.add(request)
            session.flush()
    except IntegrityError as exc:
        if OUTSTANDING_INDEX not in str(exc.orig):
            raise
        raise AlreadyOutstanding(
            "the node already has an outstanding power request", node_id=request.node_id
        ) from None
    return request


def validate_deadline(action: Action, deadline_s: float | None) -> float:
    """The request's deadline in seconds (the action's default when None).

    :raises InvalidInput: not a positive number of at most a day.
    """
    if deadline_s is None:
        return DEFAULT_DEADLINE_S[action]
    if not 1.0 <= deadline_s <= MAX_DEADLINE_S:
        raise InvalidInput(f"deadline_s must be between 1 and {MAX_DEADLINE_S:.0f} seconds")
    return float(deadline_s)


def request_power(
    session: Session,
    node: Node,
    action: Action,
    *,
    actor: str,
    deadline_s: float | None = None,
    soft_fallback: bool = False,
    batch_id: uuid.UUID | None = None,
    idempotency_key: str | None = None,
    not_before: datetime | None = None,
    boot_device: BootDevice | None = None,
    boot_persistent: bool = False,
) -> PowerIntent:
    """Record the intent to run ``action`` on ``node``, in the caller's transaction.

    A new request sets ``desired_power_state`` (on/off/soft_off/cycle/reset;
    ``query`` leaves it) and writes a ``requested`` event. An identical
    outstanding request is returned as it is.

    :raises ConflictingRequest: another action is outstanding on the node
        (``extra["outstanding"]`` is that request; it is left untouched).
    :raises InvalidInput: ``deadline_s`` is out of range, or ``soft_fallback``
        was asked for an action other than soft_off.
    :raises NotFound: the node was deleted meanwhile.
    """
    deadline = validate_deadline(action, deadline_s)
    _checked_fallback(action, soft_fallback)
    _lock_live(session, node)
    for _ in range(_INSERT_ROUNDS):
        candidate = PowerRequest(
            node_id=node.id,
            action=action,
            status=RequestStatus.PENDING,
            deadline_s=deadline,
            soft_fallback=soft_fallback,
            requested_by=actor,
            batch_id=batch_id,
            idempotency_key=idempotency_key,
            not_before=not_before,
            boot_device=boot_device.value if boot_device else None,
            boot_persistent=boot_persistent,
        )
        try:
            insert_outstanding(session, candidate)
        except AlreadyOutstanding:
            existing = outstanding_request(session, node.id)
            if existing is None:
                continue  # it finished between our insert and our read: try again
            if _identical(existing, candidate):
                return PowerIntent("existing", existing)
            raise ConflictingRequest(
                f"node {node.name!r} has an outstanding {_describe(existing)} request "
                f"({existing.status.value}); {with_article(_describe(candidate))} request "
                "cannot be accepted until it finishes, and in-flight requests are never "
                "cancelled",
                outstanding=existing,
            ) from None
        _record_intent(session, node, candidate, actor)
        return PowerIntent("created", candidate)
    raise Conflict(f"node {node.name!r} is too busy to accept a request now; try again")


def record_new(
    session: Session | Connection,
    node_name: str,
    action: Action,
    *,
    actor: str,
    deadline_s: float | None = None,
    soft_fallback: bool = False,
    idempotency_key: str | None = None,
    boot_device: BootDevice | None = None,
    boot_persistent: bool = False,
    dispatching: bool = False,
) -> dict[str, Any] | None:
    """Record a new request on the live node ``node_name`` in one statement, or nothing.

    The statement (:data:`_RECORD_NEW`) does what :func:`request_power` does
    for a node with nothing outstanding, taking the same row locks in the same
    order: the live node FOR KEY SHARE, the insert (the partial unique index
    decides races: ON CONFLICT DO NOTHING), then the node FOR NO KEY UPDATE to
    set its desired state, and the ``requested`` event with the desired state
    it replaced. With ``dispatching`` the request is written as dispatched now
    (the caller rings the lane right after commit, and takes the mark back if
    it cannot).

    Returns every column of the new request (what the database set, with what
    was inserted and the columns' defaults), or None when the node already has
    an outstanding request (nothing was written: call :func:`request_power`,
    which answers with it or refuses).

    :raises NotFound: no live node is called ``node_name``.
    :raises InvalidInput: ``deadline_s`` is out of range, or ``soft_fallback``
        was asked for an action other than soft_off.
    :raises IntegrityError: ``actor`` already used ``idempotency_key`` on a request.
    """
    desired = desired_after(action)
    params = {
        "node_name": node_name,
        "id": uuid.uuid4(),
        "action": action.value,
        "deadline_s": validate_deadline(action, deadline_s),
        "soft_fallback": _checked_fallback(action, soft_fallback),
        "actor": actor,
        "idempotency_key": idempotency_key,
        "boot_device": boot_device.value if boot_device else None,
        "boot_persistent": boot_persistent,
        "dispatching": dispatching,
        "desired": desired.value if desired else None,
        "message": f"{action.value} requested",
    }
    connection = session if isinstance(session, Connection) else session.connection()
    row = connection.exec_driver_sql(_RECORD_NEW_SQL, params).mappings().first()
    if row is None:
        raise NotFound(f"no node named {node_name!r}")
    if row["id"] is None:
        return None
    inserted = {
        "action": action,
        "status": RequestStatus.PENDING,
        "deadline_s": params["deadline_s"],
        "soft_fallback": soft_fallback,
        "requested_by": actor,
        "idempotency_key": idempotency_key,
        "boot_device": params["boot_device"],
        "boot_persistent": boot_persistent,
        "dispatch_count": 1 if dispatching else 0,
    }
    stored = {name: row[name] for name in _SET_BY_THE_DATABASE}
    return {**_NEW_REQUEST_DEFAULTS, **inserted, **stored}


def _checked_fallback(action: Action, soft_fallback: bool) -> bool:
    """``soft_fallback`` if it applies to ``action``.

    :raises InvalidInput: asked for an action other than soft_off.
    """
    if soft_fallback and action is not Action.SOFT_OFF:
        raise InvalidInput("soft_fallback applies to soft_off only")
    return soft_fallback


def _record_new_statement() -> TextualSelect:
    """The one statement of :func:`record_new`. It answers one row (the live node's
    id, then every column of the new request, all NULL when the insert did
    nothing), or none (no live node). Built once: it is the API's hot path."""
    table = PowerRequest.__table__
    returned = ", ".join(_SET_BY_THE_DATABASE)
    selected = ", ".join(f"req.{name}" for name in _SET_BY_THE_DATABASE)
    sql = f"""
WITH live AS (
    SELECT id FROM nodes
    WHERE name = :node_name AND deleted_at IS NULL
    FOR KEY SHARE
), req AS (
    INSERT INTO power_requests (
        id, node_id, action, status, deadline_s, soft_fallback, requested_by,
        idempotency_key, boot_device, boot_persistent, dispatched_at, dispatch_count)
    SELECT CAST(:id AS uuid), live.id, CAST(:action AS power_action), 'pending',
        :deadline_s, :soft_fallback, :actor, :idempotency_key, :boot_device,
        :boot_persistent, CASE WHEN :dispatching THEN now() END,
        CASE WHEN :dispatching THEN 1 ELSE 0 END
    FROM live
    ON CONFLICT (node_id) WHERE {_OUTSTANDING_PREDICATE} DO NOTHING
    RETURNING {returned}
), locked AS (
    SELECT nodes.id, nodes.desired_power_state AS before FROM nodes
    WHERE nodes.id = (SELECT node_id FROM req)
    FOR NO KEY UPDATE
), desired AS (
    UPDATE nodes
    SET desired_power_state = CAST(:desired AS desired_power_state),
        desired_power_state_at = now(), updated_at = now()
    FROM locked
    WHERE nodes.id = locked.id AND CAST(:desired AS desired_power_state) IS NOT NULL
        AND locked.before IS DISTINCT FROM CAST(:desired AS desired_power_state)
), event AS (
    INSERT INTO power_events (node_id, request_id, kind, actor, message, detail)
    SELECT req.node_id, req.id, 'requested', :actor, :message, jsonb_build_object(
        'action', CAST(:action AS text),
        'desired_power_state', CAST(:desired AS text),
        'desired_before', locked.before)
    FROM req JOIN locked ON locked.id = req.node_id
)
SELECT live.id AS live_node_id, {selected}
FROM live LEFT JOIN req ON true
"""
    types = {name: table.c[name].type for name in _SET_BY_THE_DATABASE}
    return text(sql).columns(live_node_id=Integer, **types)


# What record_new reads back of a new request: every other column is what it
# inserted or the column's default (tests/api/test_record_new.py holds it to
# the row as stored). Fewer columns back, less work per POST.
_SET_BY_THE_DATABASE = ("id", "node_id", "dispatched_at", "created_at", "updated_at")
_NEW_REQUEST_DEFAULTS: dict[str, Any] = {
    column.name: column.default.arg
    if column.default is not None and column.default.is_scalar
    else None
    for column in PowerRequest.__table__.c
}


_RECORD_NEW = _record_new_statement()
# Compiled once for psycopg and run as driver SQL: no statement-cache lookup or
# bind processing per POST (every parameter is a type psycopg adapts itself;
# tests/api/test_record_new.py holds the answer to the row as stored).
_RECORD_NEW_SQL = str(_RECORD_NEW.compile(dialect=psycopg_dialect()))  # type: ignore[no-untyped-call]


def _identical(existing: PowerRequest, candidate: PowerRequest) -> bool:
    """Whether ``candidate`` asks for what ``existing`` already does (same action,
    fallback and boot device): then it is answered with ``existing``. A different
    deadline alone does not make it another request."""
    return (
        existing.action,
        existing.soft_fallback,
        existing.boot_device,
        existing.boot_persistent,
    ) == (
        candidate.action,
        candidate.soft_fallback,
        candidate.boot_device,
        candidate.boot_persistent,
    )


def with_article(words: str) -> str:
    """``words`` after "a" or "an", as said aloud ("an 'off'", "a 'cycle'")."""
    article = "an" if words.strip("'\"")[:1].lower() in tuple("aeio") else "a"
    return f"{article} {words}"


def _describe(request: PowerRequest) -> str:
    if request.boot_device is None:
        return repr(request.action.value)
    return f"{request.action.value!r} (boot {request.boot_device})"


def _lock_live(session: Session, node: Node) -> None:
    """Hold ``node`` (FOR KEY SHARE) until commit, so a delete cannot slip in between
    reading the node and writing its request: a delete that locked it first makes
    this wait and then find no live node; one that comes later sees the request.

    :raises NotFound: the node has been deleted.
    """
    live = select(Node.id).where(Node.id == node.id, Node.deleted_at.is_(None))
    if session.scalar(live.with_for_update(read=True, key_share=True)) is None:
        raise NotFound(f"no node named {node.name!r}")


def _lock_for_desired(session: Session, node: Node) -> None:
    """Re-read ``node`` under a row lock (FOR NO KEY UPDATE) before deciding on its
    desired state: a cancel or another intent that committed meanwhile is seen,
    and none can change it until this transaction ends (no lost update)."""
    session.refresh(node, with_for_update={"key_share": True})


def _record_intent(session: Session, node: Node, request: PowerRequest, actor: str) -> None:
    desired = desired_after(request.action)
    _lock_for_desired(session, node)
    before = node.desired_power_state
    if desired is not None and node.desired_power_state is not desired:
        node.desired_power_state = desired
        node.desired_power_state_at = utcnow()
    record_event(
        session,
        node_id=node.id,
        request_id=request.id,
        kind="requested",
        actor=actor,
        message=f"{request.action.value} requested",
        detail={
            "action": request.action.value,
            "desired_power_state": desired,
            "desired_before": before.value if before else None,
        },
    )


def cancel_request(session: Session, request_id: uuid.UUID, *, actor: str) -> PowerRequest:
    """Cancel a request that no worker has claimed yet.

    The desired state this request recorded is withdrawn: the node's desired
    state goes back to what it was before the request.

    :raises NotFound: no such request.
    :raises Conflict: the request is already running or finished (a claimed
        request is never cancelled: nobody could say whether it ran).
    """
    now = utcnow()
    cancelled = session.execute(
        update(PowerRequest)
        .where(PowerRequest.id == request_id, PowerRequest.status == RequestStatus.PENDING)
        .values(status=RequestStatus.CANCELLED, finished_at=now, error=f"cancelled by {actor}")
        .returning(PowerRequest.id)
    ).first()
    request = session.get(PowerRequest, request_id, populate_existing=True)
    if request is None:
        raise NotFound(f"no power request {request_id}")
    if cancelled is None:
        raise Conflict(
            f"request {request_id} is {request.status.value}; only a pending request "
            "can be cancelled",
            request=request,
        )
    withdraw_desired(session, request.node, request)
    record_event(
        session,
        node_id=request.node_id,
        request_id=request.id,
        kind="cancelled",
        actor=actor,
        message=f"{request.action.value} cancelled before any worker claimed it",
    )
    return request


def withdraw_desired(session: Session, node: Node, request: PowerRequest) -> None:
    """Put back the desired state the cancelled request replaced (from its audit event),
    unless something else has changed it since."""
    desired = desired_after(request.action)
    _lock_for_desired(session, node)
    if desired is None or node.desired_power_state is not desired:
        return
    before = session.scalar(
        select(PowerEvent.detail["desired_before"].astext).where(
            PowerEvent.request_id == request.id, PowerEvent.kind == "requested"
        )
    )
    node.desired_power_state = DesiredPowerState(before) if before else None
    node.desired_power_state_at = utcnow()
