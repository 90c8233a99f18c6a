"""Lane leases and agent heartbeats in PostgreSQL: one statement each.

A lane lease says which agent's worker consumes a lane, until when, and
under which *fence* (a number that goes up every time the lane changes
hands). An agent renews all of its leases and its own heartbeat in one
statement per tick; it takes a lane only once the lane's lease has expired
(or was never taken), and gives a lane back by expiring its lease. A lease
that expired is never renewed: the agent takes it again, under a new fence,
after its worker has stopped.

Times are PostgreSQL's (``now()``), so agents' clocks do not have to agree;
an agent counts its own lease time from before it sent the statement
(:mod:`powerq.agent.deadline`), which can only make it stop early.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from powerq.db import run_statement


@dataclass(frozen=True)
class Identity:
    """One run of one agent: its name (unique in the installation), the run's
    ``incarnation``, its pid, and whether it shares lanes automatically."""

    name: str
    incarnation: uuid.UUID
    pid: int
    auto: bool
    # The caller knows no earlier run of this name is alive (``powerq up`` holds its
    # data dir's lock): take its name and lanes at once instead of after the lease.
    take_over: bool = False


@dataclass(frozen=True)
class Heartbeat:
    """What one tick learned.

    ``registered``: the agent's row is this run's (False: another live run of
    the same name holds it). ``members``: the live agents that share lanes
    automatically, this one included when it does. ``held``: lane -> fence of
    every lease this run still holds, all renewed by the tick.
    """

    registered: bool
    members: frozenset[str]
    held: dict[int, int]


_HEARTBEAT = text(
    """
    WITH me AS (
        INSERT INTO agents (name, incarnation, auto, pid, started_at, expires_at)
        VALUES (:name, :incarnation, :auto, :pid, now(), now() + make_interval(secs => :lease_s))
        ON CONFLICT (name) DO UPDATE
        SET incarnation = excluded.incarnation, auto = excluded.auto, pid = excluded.pid,
            started_at = CASE WHEN agents.incarnation = excluded.incarnation
                              THEN agents.started_at ELSE now() END,
            expires_at = excluded.expires_at
        WHERE agents.incarnation = excluded.incarnation OR agents.expires_at <= now()
              OR :take_over
        RETURNING name
    ), renewed AS (
        UPDATE lane_leases
        SET expires_at = now() + make_interval(secs => :lease_s)
        WHERE lane IN (SELECT lane FROM lane_leases
                       WHERE incarnation = :incarnation AND lane = ANY(CAST(:held AS integer[]))
                         AND expires_at > now() AND EXISTS (SELECT 1 FROM me)
                       ORDER BY lane FOR UPDATE)
        RETURNING lane, fence
    )
    SELECT EXISTS (SELECT 1 FROM me) AS registered,
           (SELECT coalesce(json_agg(name), '[]') FROM agents
            WHERE auto AND expires_at > now() AND name <> :name) AS others,
           (SELECT coalesce(json_object_agg(lane, fence), '{}') FROM renewed) AS held
    """
)


def heartbeat(me: Identity, lease_s: float, held: Collection[int] = ()) -> Heartbeat:
    """Renew this agent's heartbeat and the leases of ``held`` (the lanes it runs)
    that it still holds, for ``lease_s`` seconds; one statement.

    Only the lanes named are renewed: a lease this run took but lost track of
    (its answer was lost) runs out instead of being kept with no worker. Rows
    are locked in lane order, as :func:`acquire` locks them, so two agents'
    statements never deadlock.

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    row = run_statement(
        _HEARTBEAT,
        {
            "name": me.name,
            "incarnation": me.incarnation,
            "auto": me.auto,
            "pid": me.pid,
            "lease_s": lease_s,
            "held": sorted(held),
            "take_over": me.take_over,
        },
    )
    assert row is not None
    registered = bool(row.registered)
    members = set(_json(row.others))
    if registered and me.auto:
        members.add(me.name)
    held = {int(lane): int(fence) for lane, fence in _json(row.held).items()}
    return Heartbeat(registered, frozenset(members), held)


_ACQUIRE = text(
    """
    WITH taken AS (
        INSERT INTO lane_leases AS l (lane, owner, incarnation, fence, acquired_at, expires_at)
        SELECT lane, :name, :incarnation, 1, now(), now() + make_interval(secs => :lease_s)
        FROM unnest(CAST(:lanes AS integer[])) AS lane
        ORDER BY lane
        ON CONFLICT (lane) DO UPDATE
        SET owner = excluded.owner, incarnation = excluded.incarnation, fence = l.fence + 1,
            acquired_at = now(), expires_at = excluded.expires_at
        WHERE l.expires_at <= now() OR (:take_over AND l.owner = :name)
        RETURNING lane, fence
    )
    SELECT coalesce(json_object_agg(lane, fence), '{}') AS taken FROM taken
    """
)


def acquire(me: Identity, lanes: list[int], lease_s: float) -> dict[int, int]:
    """Take every lane of ``lanes`` whose lease has expired (or that nobody ever
    held), each under a new fence; return lane -> fence of those taken.

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    if not lanes:
        return {}
    row = run_statement(
        _ACQUIRE,
        {
            "name": me.name,
            "incarnation": me.incarnation,
            "lanes": sorted(lanes),
            "lease_s": lease_s,
            "take_over": me.take_over,
        },
    )
    assert row is not None
    return {int(lane): int(fence) for lane, fence in _json(row.taken).items()}


_REFENCE = text(
    """
    UPDATE lane_leases SET fence = fence + 1
    WHERE lane = :lane AND incarnation = :incarnation AND expires_at > now()
    RETURNING fence
    """
)


def refence(me: Identity, lane: int) -> int | None:
    """A new fence for a lane this run still holds, for the next worker process
    it starts on it (so the new worker tells its dead predecessor's claims from
    its own); None if the lease is no longer this run's.

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    row = run_statement(_REFENCE, {"lane": lane, "incarnation": me.incarnation})
    return None if row is None else int(row.fence)


_RELEASE = text(
    """
    UPDATE lane_leases SET expires_at = now()
    WHERE incarnation = :incarnation AND lane = ANY(CAST(:lanes AS integer[]))
      AND expires_at > now()
    RETURNING lane
    """
)


def release(me: Identity, lanes: list[int]) -> None:
    """Give ``lanes`` back at once (their workers have stopped).

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    if lanes:
        run_statement(_RELEASE, {"incarnation": me.incarnation, "lanes": lanes})


_LEAVE = text(
    """
    WITH lanes AS (
        UPDATE lane_leases SET expires_at = now()
        WHERE incarnation = :incarnation AND expires_at > now()
    )
    DELETE FROM agents WHERE name = :name AND incarnation = :incarnation RETURNING name
    """
)


def leave(me: Identity) -> None:
    """Give back every lane and leave the agents' list (a clean stop: the others
    take the lanes at their next tick instead of after the lease).

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    run_statement(_LEAVE, {"name": me.name, "incarnation": me.incarnation})


def _json(value: Any) -> Any:
    """psycopg decodes json columns itself; a text value is decoded here."""
    return json.loads(value) if isinstance(value, str) else value
