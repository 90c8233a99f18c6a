"""The monitor: refresh observed power state, report drift, optionally correct it.

``powerq.monitor`` (beat, control queue) marks *every* node whose observation
is due (in pages, ``FOR UPDATE SKIP LOCKED``), groups them by lane and rings
each lane with ``powerq.refresh_nodes`` messages of at most
:data:`CHUNK_SIZE` node ids, so refreshes run on each node's *own lane* and
one task run refreshes many nodes. A node with an outstanding request is
skipped (its executor is reading the BMC anyway). Nodes in ``power_fault``
are re-checked less often and cleared when their BMC answers again.

A refresh run loads its nodes' BMC targets in one query, reads the BMCs
concurrently on the lane worker's bounded pool (``POWERQ_MONITOR_FANOUT``),
skipping a node whose BMC turn (:func:`~powerq.tasks.node_locks.bmc_turn`)
another thread holds, and writes every observation back in one statement.
No transaction is open while a BMC is asked.

Drift (observed differs from desired) is recorded as an event. With
``POWERQ_ENFORCE_DESIRED=true`` a correcting request (actor ``monitor``) is
filed for a drifted node with no outstanding request that is neither in
maintenance nor in power_fault. Nodes in maintenance are never corrected.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, or_, select, text, update
from sqlalchemy.orm import Session

from powerq.bmc import driver_for
from powerq.bmc.base import BmcError, BmcTarget
from powerq.config import get_settings
from powerq.db import db_now, session_scope
from powerq.errors import ConfigError, ConflictingRequest
from powerq.intents import request_power
from powerq.inventory import bmc_target
from powerq.models import Node, PowerRequest
from powerq.states import OUTSTANDING_STATUSES, Action, DesiredPowerState, PowerState
from powerq.tasks.app import app
from powerq.tasks.dispatch import dispatch_request
from powerq.tasks.node_locks import bmc_turn
from powerq.tasks.routing import lane_for, lane_queue

log = logging.getLogger(__name__)

ACTOR = "monitor"
REFRESH_TASK = "powerq.refresh_nodes"
PAGE_SIZE = 2000  # due nodes marked per transaction (every due node is marked, page by page)
CHUNK_SIZE = 200  # node ids per refresh message
# A node is due again a little before a full interval has passed, so a beat
# that ticks a few milliseconds early (or a page marked a little later than
# the last tick's) does not push it to the tick after: refreshed every tick.
DUE_SLACK = 0.1


@dataclass(frozen=True)
class Reading:
    """What one BMC read gave: a state (stamped before the read), an error, or a skip."""

    node_id: int
    state: PowerState | None = None
    read_at: datetime | None = None
    error: str | None = None


@app.task(name="powerq.monitor", ignore_result=True)  # type: ignore[untyped-decorator]
def monitor() -> int:
    """Beat entry point: ring the lanes of every node whose refresh is due.

    Returns how many nodes were marked. When the broker refuses a message the
    rest are not tried (it is down): those nodes are due again next interval.
    """
    settings = get_settings()
    due = due_for_refresh(settings.monitor_interval_s)
    messages = refresh_messages(due, settings.lanes)
    for sent, (queue, node_ids) in enumerate(messages):
        try:
            refresh_chunk.apply_async(args=[node_ids], queue=queue, routing_key=queue)
        except Exception:  # any broker error: PostgreSQL says they are due next interval
            unsent = sum(len(ids) for _, ids in messages[sent:])
            log.warning(
                "broker refused a refresh: %d nodes wait an interval", unsent, exc_info=True
            )
            break
    return len(due)


def refresh_messages(
    due: Iterable[tuple[int, str]], lanes: int, chunk: int = CHUNK_SIZE
) -> list[tuple[str, list[int]]]:
    """(lane queue, node ids) per message: due nodes grouped by lane, ``chunk`` ids at most.

    :raises ValueError: ``lanes`` is not positive.
    """
    by_lane: dict[int, list[int]] = defaultdict(list)
    for node_id, name in due:
        by_lane[lane_for(name, lanes)].append(node_id)
    return [
        (lane_queue(lane), ids[start : start + chunk])
        for lane, ids in sorted(by_lane.items())
        for start in range(0, len(ids), chunk)
    ]


def due_for_refresh(interval_s: float, page_size: int = PAGE_SIZE) -> list[tuple[int, str]]:
    """Every node to refresh now: stale observation, nothing outstanding, faults less often.

    Marked page by page (one short transaction each): a marked node's
    ``last_checked_at`` is bumped at once, so neither the next page nor the
    next monitor run picks it again while its refresh waits in the lane.
    Staleness is judged against the first page's clock, so the loop ends.
    """
    tick: datetime | None = None
    due: list[tuple[int, str]] = []
    while True:
        with session_scope() as session:
            tick = tick or db_now(session)
            page = _mark_page(session, tick, interval_s, page_size)
        due.extend(page)
        if len(page) < page_size:
            return due


def _mark_page(
    session: Session, tick: datetime, interval_s: float, page_size: int
) -> list[tuple[int, str]]:
    """Mark up to ``page_size`` due nodes as checked now (one statement); their ids and names."""
    fault_recheck = timedelta(seconds=get_settings().fault_recheck_s)
    busy = exists().where(
        PowerRequest.node_id == Node.id, PowerRequest.status.in_(OUTSTANDING_STATUSES)
    )
    stale = or_(
        Node.last_checked_at.is_(None),
        and_(
            ~Node.power_fault,
            Node.last_checked_at < tick - timedelta(seconds=interval_s * (1 - DUE_SLACK)),
        ),
        and_(Node.power_fault, Node.last_checked_at < tick - fault_recheck),
    )
    picked = (
        select(Node.id)
        .where(stale, ~busy, Node.deleted_at.is_(None))
        .order_by(Node.last_checked_at.nulls_first())
        .limit(page_size)
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    rows = session.execute(
        update(Node)
        .where(Node.id == picked.c.id)
        .values(last_checked_at=func.now())
        .returning(Node.id, Node.name)
    ).all()
    return [(row[0], row[1]) for row in rows]


@app.task(name=REFRESH_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def refresh_chunk(node_ids: list[int]) -> None:
    """Refresh nodes of one lane (runs on that lane; the message holds only their ids)."""
    refresh_nodes(node_ids)


@app.task(name="powerq.refresh", ignore_result=True)  # type: ignore[untyped-decorator]
def refresh(node_id: int) -> None:
    """One node (messages queued by an older monitor still arrive under this name)."""
    refresh_nodes([node_id])


def refresh_node(node_id: int) -> PowerState | None:
    """Read one node's BMC and store it (see :func:`refresh_nodes`).

    Returns the state read, or None when the node was skipped or unreachable.
    """
    return refresh_nodes([node_id]).get(node_id)


def refresh_nodes(node_ids: Sequence[int]) -> dict[int, PowerState]:
    """Read the nodes' BMCs concurrently, store the observations, report (and maybe
    correct) drift. Three statements in all, whatever the number of nodes (plus
    the statements of each correcting request filed).

    Deleted nodes and nodes with an outstanding request are not read; nor is a
    node whose BMC another thread of this worker is talking to. Returns the
    states read, by node id.
    """
    nodes, clock = _load(node_ids)
    if not nodes:
        return {}
    readings = _read_all(nodes, clock)
    for request_id, name in _record(readings):
        dispatch_request(request_id, name)
    return {r.node_id: r.state for r in readings if r.state is not None}


@dataclass(frozen=True)
class ReadClock:
    """PostgreSQL's time at a moment, and this process's monotonic time just after it."""

    db_time: datetime
    monotonic: float

    def now(self) -> datetime:
        """PostgreSQL's time now, never later than the real one (a read's stamp)."""
        return self.db_time + timedelta(seconds=time.monotonic() - self.monotonic)


def _load(node_ids: Sequence[int]) -> tuple[list[Node], ReadClock]:
    """The live nodes among ``node_ids`` with no outstanding request, and the clock
    to stamp their reads with (one statement)."""
    busy = exists().where(
        PowerRequest.node_id == Node.id, PowerRequest.status.in_(OUTSTANDING_STATUSES)
    )
    with session_scope() as session:
        rows = session.execute(
            select(Node, func.now()).where(
                Node.id.in_(list(node_ids)), Node.deleted_at.is_(None), ~busy
            )
        ).all()
        db_time = rows[0][1] if rows else db_now(session)
    return [row[0] for row in rows], ReadClock(db_time, time.monotonic())


def _read_all(nodes: Sequence[Node], clock: ReadClock) -> list[Reading]:
    """Read every node's BMC on the worker's bounded pool; skipped nodes are left out."""
    jobs = [(node.id, _target_or_error(node)) for node in nodes]
    pool = reader_pool()
    futures = [pool.submit(_read_one, node_id, target, clock) for node_id, target in jobs]
    readings = [future.result() for future in futures]
    return [r for r in readings if r is not None]


def _target_or_error(node: Node) -> BmcTarget | str:
    """The node's BMC target, or why it cannot be built (e.g. an undecryptable password)."""
    try:
        return bmc_target(node)
    except ConfigError as exc:
        return str(exc)


def _read_one(node_id: int, target: BmcTarget | str, clock: ReadClock) -> Reading | None:
    """One BMC read under the node's BMC turn; None when the turn is taken (skipped)."""
    if isinstance(target, str):
        return Reading(node_id, error=target)
    with bmc_turn(node_id, wait=False) as taken:
        if not taken:
            return None
        read_at = clock.now()
        try:
            return Reading(node_id, driver_for(target).get_power_state(), read_at)
        except BmcError as exc:
            return Reading(node_id, error=str(exc))
        except Exception as exc:  # a driver bug must not lose the other nodes' reads
            log.exception("monitor read of node %d failed unexpectedly", node_id)
            return Reading(node_id, error=f"unexpected {type(exc).__name__}: {exc}")


_pool: ThreadPoolExecutor | None = None
_pool_guard = threading.Lock()


def reader_pool() -> ThreadPoolExecutor:
    """This process's pool of BMC readers (``POWERQ_MONITOR_FANOUT`` threads), shared
    by every refresh run of the lane worker so the bound holds per lane."""
    global _pool
    with _pool_guard:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                get_settings().monitor_fanout, thread_name_prefix="powerq-monitor"
            )
        return _pool


def _forget_pool() -> None:
    """A forked child has none of its parent's threads: it starts its own pool."""
    global _pool, _pool_guard
    _pool, _pool_guard = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


# The nodes a write may touch, locked in id order. SKIP LOCKED: a node another
# transaction holds right now (a request being filed, a step's own write) is
# left to its next refresh, so the monitor never waits on nor deadlocks with
# the executor; a fresh snapshot for the write then sees every committed request.
_LOCK = text(
    """
    SELECT id FROM nodes WHERE id = ANY(CAST(:ids AS integer[]))
    ORDER BY id FOR NO KEY UPDATE SKIP LOCKED
    """
)

# Every observation and failure of a run, in one statement. An observation is
# stored unless a newer one is (power_state_at); drift and fault clearing are
# judged only for nodes with no outstanding request, as a step reads them.
# last_checked_at keeps the tick's mark: a write seconds later would push the
# node past the next tick's cutoff and make its period two intervals.
_WRITE = text(
    """
    WITH obs AS (
        SELECT * FROM unnest(
            CAST(:ids AS integer[]), CAST(:states AS power_state[]),
            CAST(:read_at AS timestamptz[])
        ) AS o(id, state, read_at)
    ), fresh AS (
        SELECT n.id, n.power_fault AS was_fault, EXISTS (
            SELECT 1 FROM power_requests r
            WHERE r.node_id = n.id AND r.status IN ('pending', 'running')
        ) AS busy
        FROM nodes n JOIN obs ON obs.id = n.id
        WHERE n.deleted_at IS NULL
          AND (n.power_state_at IS NULL OR n.power_state_at < obs.read_at)
    ), stored AS (
        UPDATE nodes n
        SET power_state = obs.state, power_state_at = obs.read_at,
            power_fault = n.power_fault AND f.busy,
            power_fault_reason = CASE WHEN f.busy THEN n.power_fault_reason END,
            consecutive_failures = CASE WHEN f.was_fault AND NOT f.busy THEN 0
                                        ELSE n.consecutive_failures END
        FROM obs JOIN fresh f ON f.id = obs.id
        WHERE n.id = obs.id
        RETURNING n.id, n.name, n.power_state, n.desired_power_state, n.maintenance,
                  f.busy, f.was_fault
    ), judged AS (
        SELECT s.*, (NOT s.busy AND s.desired_power_state IS NOT NULL
                     AND s.power_state <> 'unknown'
                     AND s.power_state::text <> s.desired_power_state::text) AS drifted
        FROM stored s
    ), events AS (
        INSERT INTO power_events (node_id, kind, actor, message, detail)
        SELECT id, 'power_fault_cleared', :actor, 'the BMC answers again', '{}'::jsonb
        FROM judged WHERE was_fault AND NOT busy
        UNION ALL
        SELECT id, 'drift', :actor,
               'observed ' || power_state::text || ', desired ' || desired_power_state::text,
               jsonb_build_object('observed', power_state, 'desired', desired_power_state)
        FROM judged WHERE drifted
    ), failed AS (
        UPDATE nodes n SET last_error = 'monitor: ' || e.error
        FROM unnest(CAST(:failed_ids AS integer[]), CAST(:errors AS text[])) AS e(id, error)
        WHERE n.id = e.id
    )
    SELECT id, name, desired_power_state FROM judged WHERE drifted AND NOT maintenance
    """
)


def _record(readings: Sequence[Reading]) -> list[tuple[uuid.UUID, str]]:
    """Store the readings (two statements), file corrections; the requests to dispatch.

    Returns (request id, node name) of each correcting request created (to be
    dispatched after commit).
    """
    if not readings:
        return []
    with session_scope() as session:
        locked = set(session.scalars(_LOCK, {"ids": [r.node_id for r in readings]}).all())
        mine = [r for r in readings if r.node_id in locked]
        drifted = session.execute(_WRITE, _write_params(mine)).all()
        if not get_settings().enforce_desired:
            return []
        return _correct(session, [(row[0], row[2]) for row in drifted])


def _write_params(readings: Sequence[Reading]) -> dict[str, object]:
    seen = [r for r in readings if r.state is not None]
    failed = [r for r in readings if r.error is not None]
    return {
        "ids": [r.node_id for r in seen],
        "states": [r.state.value for r in seen if r.state is not None],
        "read_at": [r.read_at for r in seen],
        "failed_ids": [r.node_id for r in failed],
        "errors": [r.error for r in failed],
        "actor": ACTOR,
    }


def _correct(session: Session, drifted: Sequence[tuple[int, str]]) -> list[tuple[uuid.UUID, str]]:
    """File a correcting request for each drifted node (id, desired state) that takes one."""
    created = []
    for node_id, desired in drifted:
        node = session.get(Node, node_id)
        assert node is not None  # locked by this transaction
        action = Action.ON if DesiredPowerState(desired) is DesiredPowerState.ON else Action.OFF
        try:
            intent = request_power(session, node, action, actor=ACTOR)
        except ConflictingRequest:
            continue
        if intent.created:
            created.append((intent.request.id, node.name))
    return created
