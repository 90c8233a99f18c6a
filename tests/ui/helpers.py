"""Arranging node states in the database for the page to show (no workers
needed), and finding things on the page."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from playwright.sync_api import Locator, Page
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from powerq.audit import record_event
from powerq.db import utcnow
from powerq.models import Node, PowerEvent, PowerRequest
from powerq.secrets import encrypt_password
from powerq.states import (
    DEFAULT_DEADLINE_S,
    Action,
    DesiredPowerState,
    PowerState,
    RequestStatus,
    Step,
)
from tests.factories import make_node


def node_in_state(
    session: Session,
    name: str,
    *,
    observed: str = "on",
    observed_age_s: float = 30.0,
    desired: str | None = None,
    tags: tuple[str, ...] = (),
    **fields: Any,
) -> Node:
    """Register ``name`` and set its observed/desired state and other columns (committed)."""
    node = make_node(session, name, tags=tags)
    now = utcnow()
    node.power_state = PowerState(observed)
    node.power_state_at = None if observed == "unknown" else now - timedelta(seconds=observed_age_s)
    node.last_checked_at = node.power_state_at
    node.desired_power_state = DesiredPowerState(desired) if desired else None
    node.desired_power_state_at = now - timedelta(seconds=observed_age_s + 60) if desired else None
    for key, value in fields.items():
        setattr(node, key, value)
    session.execute(  # registered long before anything else happened to it
        update(PowerEvent)
        .where(PowerEvent.node_id == node.id, PowerEvent.kind == "registered")
        .values(created_at=now - timedelta(days=3))
    )
    session.commit()
    return node


def add_request(
    session: Session,
    node: Node,
    action: str,
    status: str,
    *,
    age_s: float = 60.0,
    took_s: float = 4.0,
    waited_s: float = 0.2,
    actor: str = "ops-alice",
    **fields: Any,
) -> PowerRequest:
    """Add a request with plausible timings (and its events) to ``node`` (committed)."""
    created = utcnow() - timedelta(seconds=age_s)
    request = PowerRequest(
        node_id=node.id,
        action=Action(action),
        status=RequestStatus(status),
        deadline_s=DEFAULT_DEADLINE_S[Action(action)],
        requested_by=actor,
        created_at=created,
        dispatched_at=created,
        dispatch_count=1,
    )
    _timings(request, created, status, waited_s, took_s)
    for key, value in fields.items():
        setattr(request, key, value)
    session.add(request)
    session.flush()
    _events(session, node, request, actor)
    session.commit()
    return request


def _timings(
    request: PowerRequest, created: datetime, status: str, waited_s: float, took_s: float
) -> None:
    if status == "pending":
        return
    request.attempt = 1
    request.started_at = created + timedelta(seconds=waited_s)
    request.deadline_at = request.started_at + timedelta(seconds=request.deadline_s)
    if status == "running":
        request.next_step = Step.CHECK
        request.lease_expires_at = utcnow() + timedelta(seconds=30)
        return
    request.finished_at = request.started_at + timedelta(seconds=took_s)


def _events(session: Session, node: Node, request: PowerRequest, actor: str) -> None:
    action = request.action.value
    events = [("requested", actor, f"{action} requested", request.created_at)]
    if request.started_at is not None:
        events.append(("started", "executor", f"{action} claimed by a worker", request.started_at))
    if request.status is RequestStatus.SUCCEEDED:
        events.append(("succeeded", "executor", f"{action} verified", request.finished_at))
    if request.status is RequestStatus.FAILED:
        events.append(("failed", "executor", request.error, request.finished_at))
    for kind, who, message, when in events:
        event = record_event(
            session, node_id=node.id, request_id=request.id, kind=kind, actor=who, message=message
        )
        event.created_at = when  # type: ignore[assignment]


# --- finding things on the page ---


def row(page: Page, name: str) -> Locator:
    """The fleet table's row of node ``name``."""
    return page.locator(f'#nodes tbody tr[data-node="{name}"]')


def count(page: Page, key: str) -> Locator:
    """The number on the count card ``key`` (total, on, off, drift, busy, ...)."""
    return page.locator(f'#counts [data-count="{key}"] .count-n')


def message(page: Page, kind: str) -> Locator:
    """Messages of ``kind`` (success, info, warning, error), newest first."""
    return page.locator(f".message-{kind}")


# --- a fleet in mixed states ---

UNREACHABLE = "BMC unreachable after 4 attempts: timed out waiting for 10.20.3.17:623 (IPMI)"

# How many of 50 nodes are in each state (scaled for other sizes).
_MIX = {
    "on": 26,
    "off": 8,
    "never-asked": 3,
    "running-off": 3,
    "pending-on": 2,
    "cycle": 1,
    "drift": 2,
    "fault": 2,
    "maintenance": 1,
    "unknown": 2,
}


def mixed_fleet(session: Session, size: int = 50) -> dict[str, list[str]]:
    """``size`` nodes in the states a real fleet shows (the same each run);
    returns the node names by state."""
    kinds = [kind for kind, n in _MIX.items() for _ in range(max(1, n * size // 50))]
    kinds = (kinds + ["on"] * size)[:size]
    random.Random(7).shuffle(kinds)
    racks = ("a", "b", "c", "d")
    roles = ("compute", "compute", "storage", "gpu")
    shown: dict[str, list[str]] = {}
    for index, kind in enumerate(kinds):
        name = f"dc1-{racks[index // 13 % 4]}{index % 13 + 1:02d}"
        tags = (f"rack-{racks[index // 13 % 4]}", roles[index % 4])
        shown.setdefault(kind, []).append(name)
        _ARRANGE[kind](session, name, tags, index)
    return shown


def _on(session: Session, name: str, tags: tuple[str, ...], i: int) -> None:
    node = node_in_state(
        session, name, observed="on", desired="on", tags=tags, observed_age_s=8 + i * 3
    )
    add_request(session, node, "on", "succeeded", age_s=3600 + i * 60, command_sent=None)


def _off(session: Session, name: str, tags: tuple[str, ...], i: int) -> None:
    node = node_in_state(session, name, observed="off", desired="off", tags=tags, observed_age_s=40)
    add_request(session, node, "off", "succeeded", age_s=900, command_sent=Action.OFF)


def _never_asked(session: Session, name: str, tags: tuple[str, ...], i: int) -> None:
    node_in_state(session, name, observed="on", desired=None, tags=tags, observed_age_s=95)


def _running_off(session: Session, name: str, tags: tuple[str, ...], i: int) -> None:
    node = node_in_state(session, name, observed="on", desired="off", tags=tags, observed_age_s=2)
    add_request(session, node, "off", "running", age_s=3, command_sent=Action.OFF)


def _pending_on(session: Session, name: str, tags: tuple[str, ...], i: int) -> None:
    node = node_in_state(session, name, observed="off", desired="on", tags=tags, observed_age_s=50)
    add_request(session, node, "on", "pending", age_s=1)


def _cycle(session: Session, name: str, tags: tuple[str, ...], i: int) -> None:
    node = node_in_state(session, name, observed="on", desired="on", tags=tags, observed_age_s=4)
    add_request(session, node, "cycle", "running", age_s=6, command_sent=Action.CYCLE)


def _drift(session: Session, name: str, tags: tuple[str, ...], i: int) -> None:
    node = node_in_state(
        session,
        name,
        observed="off",
        desired="on",
        tags=tags,
        observed_age_s=20,
        last_error="on failed: machine still off when the 120 s deadline passed",
    )
    add_request(
        session,
        node,
        "on",
        "failed",
        age_s=300,
        took_s=120,
        error="on failed: machine still off when the 120 s deadline passed",
    )


def _fault(session: Session, name: str, tags: tuple[str, ...], i: int) -> None:
    node = node_in_state(
        session,
        name,
        observed="unknown",
        desired="on",
        tags=tags,
        last_error=UNREACHABLE,
        power_fault=True,
        power_fault_reason=f"3 consecutive failed power requests; last: {UNREACHABLE}",
        power_fault_at=utcnow() - timedelta(minutes=42),
        consecutive_failures=3,
    )
    for age in (2520, 1800, 600):
        add_request(session, node, "on", "failed", age_s=age, took_s=30, error=UNREACHABLE)


def _maintenance(session: Session, name: str, tags: tuple[str, ...], i: int) -> None:
    node = node_in_state(
        session, name, observed="off", desired="off", tags=tags, maintenance=True, observed_age_s=75
    )
    add_request(session, node, "soft_off", "succeeded", age_s=7200, took_s=48)


def _unknown(session: Session, name: str, tags: tuple[str, ...], i: int) -> None:
    node_in_state(session, name, observed="unknown", desired=None, tags=tags)


_ARRANGE = {
    "on": _on,
    "off": _off,
    "never-asked": _never_asked,
    "running-off": _running_off,
    "pending-on": _pending_on,
    "cycle": _cycle,
    "drift": _drift,
    "fault": _fault,
    "maintenance": _maintenance,
    "unknown": _unknown,
}


# --- a large fleet, inserted set-based ---

_BULK_FLEET = text(
    """
    INSERT INTO nodes (name, driver, bmc_address, bmc_port, bmc_username,
                       bmc_password_encrypted, tags, power_state, power_state_at,
                       last_checked_at, desired_power_state, desired_power_state_at,
                       maintenance, power_fault, power_fault_reason, last_error,
                       created_at, updated_at)
    SELECT :prefix || lpad(i::text, 5, '0'), 'sim', :prefix || i || '.invalid', 623, 'admin',
           :secret, ARRAY['rack-' || lpad((i % 40)::text, 2, '0'),
                          CASE WHEN i % 4 = 0 THEN 'gpu' ELSE 'compute' END],
           (CASE WHEN i % 97 = 0 THEN 'unknown' WHEN i % 10 = 0 OR i % 53 = 0 THEN 'off'
                 ELSE 'on' END)::power_state,
           now() - interval '1 hour', now() - interval '1 hour',
           (CASE WHEN i % 10 = 0 THEN 'off' ELSE 'on' END)::desired_power_state,
           now() - interval '2 hours', i % 211 = 0, i % 97 = 0,
           CASE WHEN i % 97 = 0 THEN '3 consecutive failed power requests' END,
           CASE WHEN i % 97 = 0 THEN 'BMC unreachable' END,
           now() - interval '3 days', now() - interval '1 hour'
    FROM generate_series(1, :count) AS i
    """
)


def bulk_fleet(session: Session, count: int, prefix: str = "dc2-n") -> list[str]:
    """``count`` nodes in one INSERT (mostly on and in sync; every 53rd drifts,
    every 97th is unknown with a power fault, every 211th is in maintenance);
    their names in order (committed)."""
    session.execute(
        _BULK_FLEET, {"prefix": prefix, "secret": encrypt_password("secret"), "count": count}
    )
    session.commit()
    return [f"{prefix}{i:05d}" for i in range(1, count + 1)]


def bulk_fleet_counts(count: int) -> dict[str, int]:
    """What the summary counts for :func:`bulk_fleet` (the same rules, in Python)."""
    ids = range(1, count + 1)
    unknown = [i for i in ids if i % 97 == 0]
    off = [i for i in ids if i % 97 and (i % 10 == 0 or i % 53 == 0)]
    return {
        "total": count,
        "off": len(off),
        "unknown": len(unknown),
        "on": count - len(off) - len(unknown),
        "drift": len([i for i in off if i % 10]),
        "fault": len(unknown),
        "maintenance": len([i for i in ids if i % 211 == 0]),
    }
