"""The fleet at a glance, in SQL: counts for the status page (one statement,
whatever the fleet size), and the node list's extra selections the page pages
through on the server: drift / in progress, and "changed since" for delta
refreshes.

What marks a node as changed. ``nodes.updated_at`` alone is not enough: the
executor's observation statements (``powerq/tasks/leases.py``) and the
monitor's refresh write ``power_state``/``power_state_at``/``last_checked_at``
without touching it, and a request's progress (claimed, next step) is written
on ``power_requests`` only. So a node counts as changed since ``t`` when any of
``updated_at``, ``last_checked_at``, ``power_state_at`` is at or after ``t``, or
its outstanding request's ``updated_at`` is. Request creation, cancellation
and completion all touch the node row (desired state, health) as well. This
reads the columns those statements already write: nothing is added to the
executor's hot path. Two things carry no mark at all (the monitor's
``last_error`` after a failed read, and a read whose ``power_state_at`` is
older than the client's overlap): the page refetches its visible page now and
then to catch them (``docs/status-page.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Select, Text, and_, cast, exists, func, or_, select, text
from sqlalchemy.orm import Session

from powerq.inventory import NodeFilter, _filtered
from powerq.models import Node, PowerRequest
from powerq.states import OUTSTANDING_STATUSES, PowerState

Condition = Literal["drift", "busy", "ok"]

_OUTSTANDING = PowerRequest.status.in_(OUTSTANDING_STATUSES)


@dataclass(frozen=True)
class FleetFilter:
    """The node list's filters plus what only the fleet page asks for.

    ``condition``: drift (out of sync, nothing outstanding), busy (a request is
    outstanding) or ok (neither). ``changed_since``: only nodes changed at or
    after that time (see the module's docstring for what counts).
    """

    nodes: NodeFilter
    condition: Condition | None = None
    changed_since: datetime | None = None
    name_from: str | None = None
    name_to: str | None = None


def _busy() -> Any:
    return exists().where(PowerRequest.node_id == Node.id, _OUTSTANDING)


def _out_of_sync() -> Any:
    return and_(
        Node.desired_power_state.is_not(None),
        Node.power_state != PowerState.UNKNOWN,
        cast(Node.power_state, Text) != cast(Node.desired_power_state, Text),
    )


def _changed_since(since: datetime) -> Any:
    marks = func.greatest(Node.updated_at, Node.last_checked_at, Node.power_state_at)
    progressed = (
        select(PowerRequest.node_id)
        .where(_OUTSTANDING, PowerRequest.updated_at >= since)
        .scalar_subquery()
    )
    return or_(marks >= since, Node.id.in_(progressed))


def fleet_filtered(query: Select[Any], filters: FleetFilter) -> Select[Any]:
    """``query`` (over nodes) restricted to live nodes matching ``filters``."""
    query = _filtered(query, filters.nodes)
    if filters.condition == "busy":
        query = query.where(_busy())
    elif filters.condition == "drift":
        query = query.where(~_busy(), _out_of_sync())
    elif filters.condition == "ok":
        query = query.where(~_busy(), ~_out_of_sync())
    if filters.changed_since is not None:
        query = query.where(_changed_since(filters.changed_since))
    if filters.name_from is not None:
        query = query.where(Node.name >= filters.name_from)
    if filters.name_to is not None:
        query = query.where(Node.name <= filters.name_to)
    return query


def list_fleet(
    session: Session, filters: FleetFilter, *, limit: int, offset: int = 0
) -> tuple[list[Node], int]:
    """One page of live nodes matching ``filters`` (by name), and how many match.

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    total = session.scalar(fleet_filtered(select(func.count()).select_from(Node), filters)) or 0
    page = session.scalars(
        fleet_filtered(select(Node), filters).order_by(Node.name).limit(limit).offset(offset)
    )
    return list(page), total


@dataclass(frozen=True)
class FleetSummary:
    """Counts over the live fleet, and the database's time they are as of."""

    as_of: datetime
    nodes: int
    observed: dict[str, int]
    desired: dict[str, int]
    in_sync: int
    drift: int
    converging: int
    busy: int
    maintenance: int
    power_fault: int
    requests: dict[str, int]
    batches_running: int


# One statement: a pass over live nodes (with each one's outstanding request,
# at most one per node by a unique index) and a pass over outstanding requests
# (a partial index keeps the history out of it).
_SUMMARY = text(
    """
    WITH o AS (
        SELECT node_id, status, held, batch_id FROM power_requests
        WHERE status IN ('pending', 'running')
    ), n AS (
        SELECT n.power_state::text AS observed, n.desired_power_state::text AS desired,
               n.maintenance, n.power_fault, o.node_id IS NOT NULL AS busy,
               (n.desired_power_state IS NOT NULL AND n.power_state <> 'unknown'
                AND n.power_state::text <> n.desired_power_state::text) AS out_of_sync,
               (n.desired_power_state IS NOT NULL AND n.power_state <> 'unknown'
                AND n.power_state::text = n.desired_power_state::text) AS synced
        FROM nodes n LEFT JOIN o ON o.node_id = n.id
        WHERE n.deleted_at IS NULL
    )
    SELECT now() AS as_of, count(*) AS nodes,
           count(*) FILTER (WHERE observed = 'on') AS observed_on,
           count(*) FILTER (WHERE observed = 'off') AS observed_off,
           count(*) FILTER (WHERE observed = 'unknown') AS observed_unknown,
           count(*) FILTER (WHERE desired = 'on') AS desired_on,
           count(*) FILTER (WHERE desired = 'off') AS desired_off,
           count(*) FILTER (WHERE desired IS NULL) AS desired_none,
           count(*) FILTER (WHERE synced) AS in_sync,
           count(*) FILTER (WHERE out_of_sync AND NOT busy) AS drift,
           count(*) FILTER (WHERE out_of_sync AND busy) AS converging,
           count(*) FILTER (WHERE busy) AS busy,
           count(*) FILTER (WHERE maintenance) AS maintenance,
           count(*) FILTER (WHERE power_fault) AS power_fault,
           (SELECT count(*) FROM o WHERE status = 'pending' AND held) AS held,
           (SELECT count(*) FROM o WHERE status = 'pending' AND NOT held) AS pending,
           (SELECT count(*) FROM o WHERE status = 'running') AS running,
           (SELECT count(DISTINCT batch_id) FROM o) AS batches_running
    FROM n
    """
)


def fleet_summary(session: Session) -> FleetSummary:
    """Counts over the live fleet, in one statement whatever its size.

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    row = session.execute(_SUMMARY).one()
    return FleetSummary(
        as_of=row.as_of,
        nodes=row.nodes,
        observed={"on": row.observed_on, "off": row.observed_off, "unknown": row.observed_unknown},
        desired={"on": row.desired_on, "off": row.desired_off, "none": row.desired_none},
        in_sync=row.in_sync,
        drift=row.drift,
        converging=row.converging,
        busy=row.busy,
        maintenance=row.maintenance,
        power_fault=row.power_fault,
        requests={"held": row.held, "pending": row.pending, "running": row.running},
        batches_running=row.batches_running,
    )
