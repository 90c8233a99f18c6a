"""Batches: one call, one power request per node, paced by the server.

No Flask, no Celery: the rules and the database, like :mod:`powerq.intents`.

**Creating.** :func:`create_batch` writes the ``batches`` row and one request
per selected node in the caller's transaction, set-based (a constant number of
statements, whatever the number of nodes), with the rules of
:func:`powerq.intents.request_power`: a node whose identical request is
outstanding gets that request (``existing``), a node with a conflicting one is
``refused`` (with that request), and nothing else is disturbed. Requests are
inserted in node-id order (two overlapping batches cannot deadlock on the
one-outstanding index); the order the nodes were given in is each member's
``position``.

**Pacing.** Every request a batch creates starts *held*: it is the node's
outstanding request (nothing else can be asked of the node), but no worker
claims it and the sweeper does not ring it. :func:`pump` releases held
requests in batch order while the batch's released-and-unfinished requests are
fewer than ``max_in_flight``, giving each ``not_before = max(now, previous
release + stagger_s)``; the claim refuses a request before its ``not_before``,
so the stagger holds even if a message arrives early. Releases are written
with ``dispatched_at = not_before`` and returned, to be published after commit
with a countdown; one that is never delivered is re-rung by the sweeper like
any other. A release is never scheduled more than :data:`RELEASE_HORIZON`
ahead (countdown messages must stay far below Redis' visibility timeout): the
rest stay held until a later pump. The pump runs in the creating transaction,
when a batch request finishes (``powerq.batch_pump``), and in every sweep. Its
whole state is in PostgreSQL, so pacing survives restarts of anything.

**Deadline.** Every batch gets ``deadline_at`` when it is created, and each
request it creates gets ``start_by`` = that deadline: a request still held or
pending then (no worker claimed it) is failed by the sweeper
(:func:`expire_unstarted`), and its node is free again. ``batch_deadline_s``
sets it; the default (:func:`default_window_s`) lets a well-formed batch finish.
Pacing that cannot start the last node before the deadline (``(nodes - 1) *
stagger_s`` seconds at the least) is refused, and no batch waits more than
:data:`MAX_BATCH_DEADLINE_S`.

**Cancelling.** :func:`cancel_batch` cancels, in one statement, every request
of the batch no worker has claimed (held or pending); running ones finish.

**Maintenance.** A node in maintenance is left out of the nodes a selector
picks unless the batch asks for ``include_maintenance``; the ones left out are
the batch's ``skipped`` (stored on the batch, with the selector as given,
``{"node": …, "reason": "maintenance"}`` each). Named nodes always run, in
maintenance or not (as single requests do, and as in Ironic): naming a node is
asking for it. Leaving them out costs no statement: the selector's one query
reads each node's maintenance flag.

**Membership.** Every node of a batch is a ``batch_members`` row: its
position, its outcome, and the request that answers it (the batch's own, the
identical one reused, or the conflicting one). Requests the batch created also
carry its ``batch_id``. Results are read a page at a time, in batch order.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple, get_args

from sqlalchemy import (
    ColumnElement,
    Select,
    Text,
    any_,
    bindparam,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Session, joinedload

from powerq.db import db_now
from powerq.errors import Conflict, InvalidInput, NotFound
from powerq.intents import validate_deadline, with_article, withdraw_desired
from powerq.models import Batch, BatchMember, Node, PowerEvent, PowerRequest
from powerq.states import Action, RequestStatus, desired_after

MAX_BATCH_NODES = 10_000
MAX_STAGGER_S = 3600.0
# Bounds on one pump: batches looked at, and requests released per batch.
PUMP_BATCH_LIMIT = 200
RELEASE_LIMIT = 500
# No release is scheduled further ahead than this (countdowns stay short).
RELEASE_HORIZON = timedelta(seconds=60)
# No batch holds its nodes longer than this.
MAX_BATCH_DEADLINE_S = 7 * 24 * 3600.0
# Added to the default deadline: lane queueing, a lost message re-rung by the sweeper.
DEADLINE_GRACE_S = 300.0
# Per-node results per page of a batch's view, by default and at most.
RESULTS_PAGE = 1000
MAX_RESULTS_PAGE = MAX_BATCH_NODES
# Bound on the requests one sweep fails for their batch's deadline.
EXPIRE_LIMIT = 500
# Rounds of creation for nodes whose insert lost to a request that then finished
# before it could be read (as in powerq.intents); the index still decides.
_INSERT_ROUNDS = 5

Outcome = Literal["created", "existing", "refused"]
# How a node of a batch stands: its request's status, "held" or "refused".
State = Literal["held", "pending", "running", "succeeded", "failed", "cancelled", "refused"]
STATES: tuple[State, ...] = get_args(State)
UNFINISHED_STATES: frozenset[State] = frozenset({"held", "pending", "running"})


@dataclass(frozen=True)
class Selector:
    """Which nodes a batch is for: all criteria must match. ``all`` must be set to
    select every node when no tag or name pattern is given."""

    tags: tuple[str, ...] = ()
    name_glob: str | None = None
    all: bool = False

    def as_json(self) -> dict[str, Any]:
        """The selector as stored on the batch."""
        return {"tags": list(self.tags), "name_glob": self.name_glob, "all": self.all}


@dataclass(frozen=True)
class BatchSpec:
    """What a batch asks for: an action on named nodes or on the nodes a selector picks."""

    action: Action
    nodes: tuple[str, ...] | None = None
    selector: Selector | None = None
    stagger_s: float = 0.0
    max_in_flight: int | None = None
    name: str | None = None
    # Seconds each request may take once started (the action's default when None).
    deadline_s: float | None = None
    # Seconds from creation until unstarted requests fail (:func:`batch_window_s`).
    batch_deadline_s: float | None = None
    # Whether a selector also picks nodes in maintenance (named nodes always run).
    include_maintenance: bool = False


@dataclass(frozen=True)
class Member:
    """What the batch did for one node when it was created."""

    node: str
    outcome: Outcome
    # The batch's own request, the identical one reused, or the conflicting one.
    request_id: uuid.UUID
    detail: str | None = None


class Release(NamedTuple):
    """A held request the pump released: publish it after commit, ``delay_s`` from now."""

    request_id: uuid.UUID
    node_name: str
    not_before: datetime
    delay_s: float


@dataclass(frozen=True)
class CreatedBatch:
    """The result of :func:`create_batch`: the batch, its members, and what to dispatch."""

    batch: Batch
    members: list[Member]
    releases: list[Release]


@dataclass(frozen=True)
class NodeResult:
    """How one node of a batch stands now."""

    node: str
    outcome: Outcome
    state: State
    request: PowerRequest | None
    conflicting: PowerRequest | None
    error: str | None


@dataclass(frozen=True)
class BatchView:
    """A batch with counts per state (and, when asked, per-node results)."""

    batch: Batch
    counts: dict[State, int]
    outcomes: dict[str, int]
    # One page of per-node results, in batch order, when asked for.
    results: list[NodeResult] | None = field(default=None)
    limit: int | None = None
    offset: int | None = None

    @property
    def total(self) -> int:
        """Nodes in the batch (created, reused and refused)."""
        return sum(self.outcomes.values())

    @property
    def finished(self) -> bool:
        """Whether no node of the batch has work outstanding."""
        return not any(self.counts[state] for state in UNFINISHED_STATES)


# --- creating -----------------------------------------------------------------


def validate_spec(spec: BatchSpec) -> None:
    """Check the batch's own settings (nodes are checked by :func:`select_nodes`).

    :raises InvalidInput: not exactly one of nodes/selector, an empty selector,
        stagger or max_in_flight out of range, or a bad deadline.
    """
    if (spec.nodes is None) == (spec.selector is None):
        raise InvalidInput("give either nodes or a selector, not both")
    selector = spec.selector
    if selector is not None and not (selector.all or selector.tags or selector.name_glob):
        raise InvalidInput("the selector needs tags, a name_glob, or all: true")
    if spec.nodes is not None and not 1 <= len(spec.nodes) <= MAX_BATCH_NODES:
        raise InvalidInput(f"a batch names 1 to {MAX_BATCH_NODES} nodes")
    if not 0 <= spec.stagger_s <= MAX_STAGGER_S:
        raise InvalidInput(f"stagger_s must be between 0 and {MAX_STAGGER_S:.0f} seconds")
    if spec.max_in_flight is not None and spec.max_in_flight < 1:
        raise InvalidInput("max_in_flight must be at least 1")
    validate_deadline(spec.action, spec.deadline_s)
    if spec.batch_deadline_s is not None and not 1 <= spec.batch_deadline_s <= MAX_BATCH_DEADLINE_S:
        raise InvalidInput(
            f"batch_deadline_s must be between 1 and {MAX_BATCH_DEADLINE_S:.0f} seconds (7 days)"
        )


def default_window_s(spec: BatchSpec, node_count: int) -> float:
    """Seconds a batch of ``node_count`` nodes gets by default to start them all:
    ``max(nodes * stagger_s, ceil(nodes / max_in_flight) * (stagger_s + deadline_s))``
    plus :data:`DEADLINE_GRACE_S`, at most :data:`MAX_BATCH_DEADLINE_S`.

    Each wave of ``max_in_flight`` requests may take its per-request deadline
    before the next wave starts, and starts are ``stagger_s`` apart.

    :raises InvalidInput: the spec's per-request ``deadline_s`` is out of range.
    """
    per_request = validate_deadline(spec.action, spec.deadline_s)
    waves = math.ceil(node_count / (spec.max_in_flight or node_count))
    paced = max(node_count * spec.stagger_s, waves * (spec.stagger_s + per_request))
    return min(paced + DEADLINE_GRACE_S, MAX_BATCH_DEADLINE_S)


def batch_window_s(spec: BatchSpec, node_count: int) -> float:
    """Seconds from creation to the batch's deadline: ``batch_deadline_s`` when
    given, else :func:`default_window_s`.

    :raises InvalidInput: the stagger alone cannot start the last of the
        ``node_count`` nodes before the deadline (``(nodes - 1) * stagger_s``
        seconds are needed), or ``deadline_s`` is out of range.
    """
    window = (
        spec.batch_deadline_s
        if spec.batch_deadline_s is not None
        else default_window_s(spec, node_count)
    )
    needed = (node_count - 1) * spec.stagger_s
    if needed >= window:
        limit = (
            f"batch_deadline_s is {window:.0f}s"
            if spec.batch_deadline_s is not None
            else f"a batch may take at most {MAX_BATCH_DEADLINE_S:.0f}s (7 days)"
        )
        raise InvalidInput(
            f"{node_count} nodes {spec.stagger_s:g}s apart need {needed:.0f}s to start the "
            f"last one, but {limit}: give fewer nodes, a smaller stagger_s or a longer "
            "batch_deadline_s"
        )
    return window


def glob_to_like(glob: str) -> str:
    """A shell-style name pattern (``*`` any run, ``?`` one character) as a LIKE
    pattern with ``\\`` as its escape character."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


class Target(NamedTuple):
    """A node a batch is for, as :func:`select_nodes` found it."""

    id: int
    name: str


class Selection(NamedTuple):
    """The nodes a batch runs on, in batch order, and the names of those a selector
    matched but left out because they are in maintenance."""

    targets: list[Target]
    skipped: list[str]


def select_nodes(session: Session, spec: BatchSpec) -> Selection:
    """The batch's nodes: the named ones in the order given (duplicates dropped,
    maintenance or not), or the selector's matches by name, those in maintenance
    left out (``skipped``) unless ``include_maintenance``. One statement. Each
    is held (FOR KEY SHARE) until the transaction ends, as
    :func:`powerq.intents.request_power` holds its node: a delete that locked a
    node first makes this wait and then not find it, one that comes later sees
    the batch's request.

    :raises NotFound: a named node does not exist, or the selector matches none
        (or only nodes in maintenance).
    :raises InvalidInput: the selector matches more than :data:`MAX_BATCH_NODES`.
    """
    if spec.nodes is not None:
        return Selection(_named_nodes(session, spec.nodes), [])
    assert spec.selector is not None
    query = _live_targets().order_by(Node.name).limit(MAX_BATCH_NODES + 1)
    if spec.selector.tags:
        query = query.where(Node.tags.contains(list(spec.selector.tags)))
    if spec.selector.name_glob:
        query = query.where(Node.name.like(glob_to_like(spec.selector.name_glob), escape="\\"))
    rows = session.execute(query).all()
    nodes = [Target(r.id, r.name) for r in rows if spec.include_maintenance or not r.maintenance]
    skipped = [r.name for r in rows if r.maintenance and not spec.include_maintenance]
    if not nodes:
        raise NotFound(_matches_none(spec.selector, skipped), skipped=_skipped_json(skipped))
    if len(rows) > MAX_BATCH_NODES:
        raise InvalidInput(f"the selector matches more than {MAX_BATCH_NODES} nodes")
    return Selection(nodes, skipped)


def _matches_none(selector: Selector, skipped: list[str]) -> str:
    """Why a selector leaves no node to run on."""
    if not skipped:
        return f"no node matches the selector {_describe(selector)}"
    shown = ", ".join(repr(name) for name in skipped[:10])
    more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    return (
        f"every node the selector {_describe(selector)} matches is in maintenance "
        f"({shown}{more}); set include_maintenance to run on them too"
    )


def _skipped_json(skipped: list[str]) -> list[dict[str, str]]:
    """The skipped nodes as the batch reports them."""
    return [{"node": name, "reason": "maintenance"} for name in skipped]


def skipped_of(batch: Batch) -> list[dict[str, str]]:
    """The nodes the batch's selector left out (in maintenance), as stored with it."""
    return list(batch.selector.get("skipped") or [])


def given_selector(batch: Batch) -> dict[str, Any]:
    """The nodes or selector as given (what is stored beside it left out)."""
    return {key: value for key, value in batch.selector.items() if key != "skipped"}


def _live_targets() -> Select[int, str, bool]:
    """Live nodes' ids, names and maintenance flags, locked FOR KEY SHARE."""
    return (
        select(Node.id, Node.name, Node.maintenance)
        .where(Node.deleted_at.is_(None))
        .with_for_update(read=True, key_share=True)
    )


def _named_nodes(session: Session, names: Sequence[str]) -> list[Target]:
    wanted = list(dict.fromkeys(names))
    named = _live_targets().where(Node.name == any_(bindparam("names", wanted, ARRAY(Text))))
    found = {row.name: Target(row.id, row.name) for row in session.execute(named)}
    missing = [name for name in wanted if name not in found]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise NotFound(f"no node named {shown}{more}", missing=missing)
    return [found[name] for name in wanted]


def _describe(selector: Selector) -> str:
    parts = [f"tags {','.join(selector.tags)}"] if selector.tags else []
    if selector.name_glob:
        parts.append(f"name {selector.name_glob!r}")
    return " and ".join(parts) or "all"


def create_batch(session: Session, spec: BatchSpec, *, actor: str) -> CreatedBatch:
    """Record a batch and its requests in the caller's transaction, and release
    what may start at once. Publish ``releases`` only after commit.

    A constant number of statements whatever the number of nodes (see
    :func:`_join_all`).

    :raises InvalidInput: see :func:`validate_spec` and :func:`batch_window_s`.
    :raises NotFound: see :func:`select_nodes`.
    :raises Conflict: a node stayed too busy to accept a request (rare; retry).
    """
    validate_spec(spec)
    nodes, skipped = select_nodes(session, spec)
    window = batch_window_s(spec, len(nodes))
    given: dict[str, Any] = {"nodes": list(dict.fromkeys(spec.nodes))} if spec.nodes else {}
    if spec.selector is not None:
        given = spec.selector.as_json()
        if spec.include_maintenance:
            given["include_maintenance"] = True
    if skipped:
        given["skipped"] = _skipped_json(skipped)
    batch = session.scalars(
        insert(Batch)
        .values(
            name=spec.name,
            action=spec.action,
            stagger_s=spec.stagger_s,
            max_in_flight=spec.max_in_flight,
            selector=given,
            requested_by=actor,
            deadline_at=func.now() + timedelta(seconds=window),
        )
        .returning(Batch)
    ).one()
    members = _join_all(session, batch, nodes, spec, actor)
    return CreatedBatch(batch, members, pump(session, only=[batch.id]))


def _join_all(
    session: Session, batch: Batch, nodes: Sequence[Target], spec: BatchSpec, actor: str
) -> list[Member]:
    """Ask for the batch's action on every node (:data:`_JOIN`), in batch order.

    A node whose insert lost to a request committed after the statement's
    snapshot is neither created nor seen as conflicting: it is asked again in a
    new statement (as :func:`powerq.intents.request_power` retries).

    :raises Conflict: some node stayed too busy for :data:`_INSERT_ROUNDS` rounds.
    """
    deadline = validate_deadline(spec.action, spec.deadline_s)
    desired = desired_after(spec.action)
    params: dict[str, Any] = {
        "batch_id": batch.id,
        "action": spec.action.value,
        "deadline_s": deadline,
        "actor": actor,
        "start_by": batch.deadline_at,
        "desired": desired.value if desired is not None else None,
        "message": f"{spec.action.value} requested",
        "candidate": with_article(repr(spec.action.value)),
    }
    members: dict[int, Member] = {}
    waiting = dict(enumerate(nodes))
    for _ in range(_INSERT_ROUNDS):
        rows = session.execute(
            _JOIN,
            {**params, "node_ids": [n.id for n in waiting.values()], "positions": list(waiting)},
        )
        for row in rows:
            node = waiting.pop(row.position)
            members[row.position] = Member(node.name, row.outcome, row.request_id, row.detail)
        if not waiting:
            return [members[position] for position in range(len(nodes))]
    busy = ", ".join(repr(node.name) for node in list(waiting.values())[:10])
    raise Conflict(f"nodes {busy} are too busy to accept a request now; try again")


# One statement for every node of a batch, as request_power does for one:
# insert each node's request (held, to start by the batch's deadline) unless the
# node has one outstanding (the partial unique index decides: ON CONFLICT … DO
# NOTHING, in node-id order so overlapping batches cannot deadlock); lock the
# nodes it created requests for (FOR NO KEY UPDATE, as _lock_for_desired does)
# and set their desired state from the locked row; write one "requested" event
# each; answer every other node with its outstanding request (identical:
# "existing", else "refused" and why); and record every node as a member.
_JOIN = text(
    """
WITH given AS (
    SELECT g.node_id, g.position
    FROM unnest(CAST(:node_ids AS integer[]), CAST(:positions AS integer[]))
         AS g(node_id, position)
), created AS (
    INSERT INTO power_requests
        (node_id, action, status, deadline_s, requested_by, batch_id, held, start_by)
    SELECT node_id, CAST(:action AS power_action), 'pending', :deadline_s, :actor, :batch_id,
           true, :start_by
    FROM given ORDER BY node_id
    ON CONFLICT (node_id) WHERE status IN ('pending', 'running') DO NOTHING
    RETURNING id, node_id
), locked AS (
    SELECT n.id, n.desired_power_state AS before
    FROM nodes n JOIN created ON created.node_id = n.id
    ORDER BY n.id
    FOR NO KEY UPDATE OF n
), desire AS (
    UPDATE nodes n
    SET desired_power_state = CAST(:desired AS desired_power_state),
        desired_power_state_at = now(), updated_at = now()
    FROM locked
    WHERE n.id = locked.id AND CAST(:desired AS desired_power_state) IS NOT NULL
      AND locked.before IS DISTINCT FROM CAST(:desired AS desired_power_state)
    RETURNING n.id
), events AS (
    INSERT INTO power_events (node_id, request_id, kind, actor, message, detail)
    SELECT created.node_id, created.id, 'requested', :actor, :message,
           jsonb_build_object('action', CAST(:action AS text),
                              'desired_power_state', CAST(:desired AS text),
                              'desired_before', CAST(locked.before AS text))
    FROM created JOIN locked ON locked.id = created.node_id
    RETURNING id
), outstanding AS (
    SELECT g.node_id, g.position, r.id,
           r.action = CAST(:action AS power_action) AND NOT r.soft_fallback
               AND r.boot_device IS NULL AND NOT r.boot_persistent AS identical,
           format('node %L has an outstanding %s request (%s); %s request cannot be '
                  'accepted until it finishes, and in-flight requests are never cancelled',
                  n.name,
                  CASE WHEN r.boot_device IS NULL THEN quote_literal(r.action::text)
                       ELSE format('%L (boot %s)', r.action::text, r.boot_device) END,
                  r.status, CAST(:candidate AS text)) AS why
    FROM given g
    JOIN power_requests r ON r.node_id = g.node_id AND r.status IN ('pending', 'running')
    JOIN nodes n ON n.id = g.node_id
    WHERE g.node_id NOT IN (SELECT node_id FROM created)
), members AS (
    INSERT INTO batch_members (batch_id, position, node_id, request_id, outcome, detail)
    SELECT :batch_id, g.position, g.node_id, created.id, 'created', NULL
    FROM created JOIN given g ON g.node_id = created.node_id
    UNION ALL
    SELECT :batch_id, position, node_id, id,
           CASE WHEN identical THEN 'existing' ELSE 'refused' END,
           CASE WHEN identical THEN NULL ELSE why END
    FROM outstanding
    RETURNING position, request_id, outcome, detail
)
SELECT position, request_id, outcome, detail FROM members
"""
).bindparams(bindparam("batch_id", type_=UUID(as_uuid=True)))


# --- pacing -------------------------------------------------------------------


def pump(session: Session, only: Collection[uuid.UUID] | None = None) -> list[Release]:
    """Release held requests of active batches (or of the ``only`` ones) as far as
    ``max_in_flight`` and ``stagger_s`` allow, in batch order, in the caller's
    transaction.

    Each batch's row is locked (in id order) while it is pumped, so concurrent
    pumps (and :func:`cancel_batch`) take turns instead of releasing the same
    room twice. A cancelled batch is never pumped, and no request is released
    to start at or after its ``start_by``. Returns what to publish after commit.
    """
    waiting = select(PowerRequest.batch_id).where(
        PowerRequest.held,
        PowerRequest.status == RequestStatus.PENDING,
        PowerRequest.batch_id.is_not(None),
    )
    query = select(Batch).where(Batch.id.in_(waiting), Batch.cancelled_at.is_(None))
    if only is not None:
        query = query.where(Batch.id.in_(list(only)))
    batches = session.scalars(query.order_by(Batch.id).limit(PUMP_BATCH_LIMIT).with_for_update())
    releases: list[Release] = []
    for batch in batches.all():
        releases += _release(session, batch)
    return releases


def _room(session: Session, batch: Batch) -> int:
    """How many more of the batch's requests may be released now."""
    if batch.max_in_flight is None:
        return RELEASE_LIMIT
    in_flight = session.scalar(
        select(func.count()).where(
            PowerRequest.batch_id == batch.id,
            ~PowerRequest.held,
            PowerRequest.status.in_([RequestStatus.PENDING, RequestStatus.RUNNING]),
        )
    )
    return min(batch.max_in_flight - int(in_flight or 0), RELEASE_LIMIT)


def _release(session: Session, batch: Batch) -> list[Release]:
    """Release up to the batch's room of its held requests, in position order, in
    one statement (:data:`_RELEASE`)."""
    room = _room(session, batch)
    if room <= 0:
        return []
    rows = session.execute(
        _RELEASE,
        {
            "batch_id": batch.id,
            "room": room,
            "stagger_s": batch.stagger_s,
            "horizon_s": RELEASE_HORIZON.total_seconds(),
        },
    ).all()
    ordered = sorted(rows, key=lambda row: row.position)
    return [Release(r.id, r.name, r.at, (r.at - r.now).total_seconds()) for r in ordered]


# The next ``room`` held requests of a batch, by position, each ``stagger_s`` after
# the previous release (the first no earlier than now): released with
# ``not_before = dispatched_at`` = that time (the sweeper re-rings one only once
# that is stale), up to the first that would start beyond the horizon or at or
# after its start_by (later, or never: the sweeper fails it at its start_by).
_RELEASE = text(
    """
WITH held AS (
    SELECT r.id, r.node_id, r.start_by, m.position
    FROM power_requests r
    JOIN batch_members m
      ON m.batch_id = :batch_id AND m.node_id = r.node_id AND m.request_id = r.id
    WHERE r.batch_id = :batch_id AND r.held AND r.status = 'pending'
    ORDER BY m.position
    LIMIT :room
    FOR UPDATE OF r
), base AS MATERIALIZED (
    SELECT greatest(now(), max(not_before) + make_interval(secs => :stagger_s)) AS at
    FROM power_requests WHERE batch_id = :batch_id AND NOT held
), slots AS (
    SELECT held.*, base.at + make_interval(secs => :stagger_s)
                             * (row_number() OVER (ORDER BY held.position) - 1) AS at
    FROM held, base
), due AS (
    SELECT * FROM (
        SELECT slots.*,
               bool_and(at <= now() + make_interval(secs => :horizon_s)
                        AND (start_by IS NULL OR at < start_by))
                   OVER (ORDER BY position) AS ok
        FROM slots
    ) checked
    WHERE ok
)
UPDATE power_requests r
SET held = false, not_before = due.at, dispatched_at = due.at,
    dispatch_count = r.dispatch_count + 1, updated_at = now()
FROM due JOIN nodes n ON n.id = due.node_id
WHERE r.id = due.id
RETURNING r.id, n.name, due.at, due.position, now() AS now
"""
).bindparams(bindparam("batch_id", type_=UUID(as_uuid=True)))


# --- ending what has not started ------------------------------------------------


class Ended(NamedTuple):
    """A request ended before any worker claimed it."""

    request_id: uuid.UUID
    node_name: str


@dataclass(frozen=True)
class CancelledBatch:
    """The result of :func:`cancel_batch`."""

    batch: Batch
    # Held or pending requests now cancelled, and running ones left to finish.
    cancelled: list[Ended]
    running: list[Ended]


def cancel_batch(session: Session, batch_id: uuid.UUID, *, actor: str) -> CancelledBatch:
    """Cancel every request of the batch that no worker has claimed (held or
    pending), in the caller's transaction; running ones finish.

    Each node's desired state goes back to what it was before the request (as
    :func:`powerq.intents.cancel_request` does) and a ``cancelled`` event is
    recorded. ``cancelled_at`` is set the first time something is cancelled;
    cancelling again cancels nothing. The batch's row is locked first, so a
    concurrent pump either ran before (its releases are cancelled too) or
    finds the batch cancelled.

    :raises NotFound: no such batch.
    """
    batch = session.scalars(
        select(Batch).where(Batch.id == batch_id).with_for_update()
    ).one_or_none()
    if batch is None:
        raise NotFound(f"no batch {batch_id}")
    now = db_now(session)
    targets = select(PowerRequest.id).where(
        PowerRequest.batch_id == batch_id, PowerRequest.status == RequestStatus.PENDING
    )
    cancelled = _end_unstarted(
        session,
        targets,
        now=now,
        status=RequestStatus.CANCELLED,
        kind="cancelled",
        actor=actor,
        error=literal(f"cancelled by {actor} with batch {batch_id} before any worker claimed it"),
    )
    if cancelled and batch.cancelled_at is None:
        batch.cancelled_at = now
    running = session.execute(
        select(PowerRequest.id, Node.name)
        .join(Node, Node.id == PowerRequest.node_id)
        .where(PowerRequest.batch_id == batch_id, PowerRequest.status == RequestStatus.RUNNING)
        .order_by(Node.name)
    ).all()
    return CancelledBatch(batch, cancelled, [Ended(row[0], row[1]) for row in running])


def expire_unstarted(
    session: Session, now: datetime | None = None, *, limit: int = EXPIRE_LIMIT
) -> list[uuid.UUID]:
    """Fail (at most ``limit``) held or pending requests whose ``start_by`` has
    passed, in the caller's transaction; return their ids.

    One UPDATE … RETURNING, conditional on ``status = 'pending'`` and skipping
    rows others hold: a request a worker claims concurrently stays claimed. Each
    node's desired state goes back to what it was before the request, and a
    ``failed`` event is recorded. Nothing is counted against the node's health:
    no BMC was asked anything.
    """
    now = db_now(session) if now is None else now
    due = (
        select(PowerRequest.id)
        .where(
            PowerRequest.status == RequestStatus.PENDING,
            PowerRequest.start_by.is_not(None),
            PowerRequest.start_by <= now,
        )
        .order_by(PowerRequest.start_by)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    deadline = func.to_char(
        func.timezone("UTC", PowerRequest.start_by), 'YYYY-MM-DD"T"HH24:MI:SS"Z"'
    )
    error = func.concat("not started before its batch's deadline (", deadline, ")")
    ended = _end_unstarted(
        session, due, now=now, status=RequestStatus.FAILED, kind="failed", actor="sweeper",
        error=error,
    )  # fmt: skip
    return [row.request_id for row in ended]


def _end_unstarted(
    session: Session,
    targets: Select[Any],
    *,
    now: datetime,
    status: RequestStatus,
    kind: str,
    actor: str,
    error: ColumnElement[str],
) -> list[Ended]:
    """End the pending ``targets`` with ``status`` and ``error`` and record one
    ``kind`` event each (the error is its message), in one statement; then put
    back each node's desired state. Returns what was ended, by node name."""
    ended = (
        update(PowerRequest)
        .where(PowerRequest.id.in_(targets), PowerRequest.status == RequestStatus.PENDING)
        .values(status=status, finished_at=now, error=error)
        .returning(PowerRequest.id, PowerRequest.node_id, PowerRequest.error, PowerRequest.batch_id)
        .cte("ended")
    )
    events = (
        insert(PowerEvent)
        .from_select(
            ["node_id", "request_id", "kind", "actor", "message", "detail"],
            select(
                ended.c.node_id,
                ended.c.id,
                literal(kind),
                literal(actor),
                ended.c.error,
                func.jsonb_build_object("batch_id", ended.c.batch_id),
            ),
        )
        .returning(PowerEvent.request_id)
    )
    ids = list(session.scalars(events))
    return _withdraw_all(session, [request_id for request_id in ids if request_id is not None])


def _withdraw_all(session: Session, request_ids: list[uuid.UUID]) -> list[Ended]:
    """Put back the desired state each ended request had replaced (the rule of
    :func:`powerq.intents.cancel_request`); return them by node name."""
    if not request_ids:
        return []
    requests = session.scalars(
        select(PowerRequest)
        .where(PowerRequest.id.in_(request_ids))
        .options(joinedload(PowerRequest.node))
        .execution_options(populate_existing=True)
    ).all()
    for request in requests:
        withdraw_desired(session, request.node, request)
    return sorted((Ended(r.id, r.node.name) for r in requests), key=lambda e: e.node_name)


# --- reading ------------------------------------------------------------------


def state_of(request: PowerRequest) -> State:
    """A request's state as a batch reports it (``held`` for a held pending one)."""
    if request.held and request.status is RequestStatus.PENDING:
        return "held"
    return request.status.value


def _counts(session: Session, batch_ids: list[uuid.UUID]) -> dict[uuid.UUID, Counter[str]]:
    """Per batch: members per outcome, and per state (what their requests are now)."""
    counts: dict[uuid.UUID, Counter[str]] = {batch_id: Counter() for batch_id in batch_ids}
    if not batch_ids:
        return counts
    rows = session.execute(
        select(
            BatchMember.batch_id,
            BatchMember.outcome,
            PowerRequest.status,
            PowerRequest.held,
            func.count(),
        )
        .join(PowerRequest, PowerRequest.id == BatchMember.request_id)
        .where(BatchMember.batch_id.in_(batch_ids))
        .group_by(BatchMember.batch_id, BatchMember.outcome, PowerRequest.status, PowerRequest.held)
    ).all()
    for batch_id, outcome, status, held, count in rows:
        if outcome == "refused":
            state = "refused"
        else:
            state = "held" if held and status is RequestStatus.PENDING else status.value
        counts[batch_id][state] += count
        counts[batch_id][f"outcome:{outcome}"] += count
    return counts


def _view(batch: Batch, counted: Counter[str]) -> BatchView:
    counts = {state: counted[state] for state in STATES}
    outcomes = {outcome: counted[f"outcome:{outcome}"] for outcome in get_args(Outcome)}
    return BatchView(batch, counts, outcomes)


def batch_view(
    session: Session,
    batch_id: uuid.UUID,
    *,
    results: bool = True,
    limit: int = RESULTS_PAGE,
    offset: int = 0,
) -> BatchView:
    """The batch, its counts per state and (with ``results``) one page of its
    nodes' results, in batch order: ``limit`` of them from ``offset``.

    :raises NotFound: no such batch.
    """
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise NotFound(f"no batch {batch_id}")
    view = _view(batch, _counts(session, [batch.id])[batch.id])
    if not results:
        return view
    page = _results(session, batch.id, limit, offset)
    return BatchView(view.batch, view.counts, view.outcomes, page, limit, offset)


def _results(session: Session, batch_id: uuid.UUID, limit: int, offset: int) -> list[NodeResult]:
    rows = session.execute(
        select(BatchMember.outcome, BatchMember.detail, Node.name, PowerRequest)
        .join(Node, Node.id == BatchMember.node_id)
        .join(PowerRequest, PowerRequest.id == BatchMember.request_id)
        .where(BatchMember.batch_id == batch_id)
        .order_by(BatchMember.position)
        .limit(limit)
        .offset(offset)
    ).all()
    return [_result(outcome, detail, name, request) for outcome, detail, name, request in rows]


def _result(outcome: str, detail: str | None, node: str, request: PowerRequest) -> NodeResult:
    if outcome == "refused":
        return NodeResult(node, "refused", "refused", None, request, detail)
    reused: Outcome = "existing" if outcome == "existing" else "created"
    return NodeResult(node, reused, state_of(request), request, None, request.error)


def list_batches(session: Session, *, limit: int, offset: int = 0) -> tuple[list[BatchView], int]:
    """One page of batches, newest first, with their counts, and how many exist."""
    total = session.scalar(select(func.count()).select_from(Batch)) or 0
    page = list(
        session.scalars(
            select(Batch).order_by(Batch.created_at.desc(), Batch.id).limit(limit).offset(offset)
        )
    )
    counts = _counts(session, [batch.id for batch in page])
    return [_view(batch, counts[batch.id]) for batch in page], total
