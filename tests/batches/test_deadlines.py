"""A batch cannot lock the fleet: every batch has a deadline (its unstarted
requests then fail) and can be cancelled. Real PostgreSQL, no BMC or worker."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from powerq.batches import (
    DEADLINE_GRACE_S,
    MAX_BATCH_DEADLINE_S,
    batch_view,
    batch_window_s,
    cancel_batch,
    default_window_s,
    expire_unstarted,
    validate_spec,
)
from powerq.db import db_now, session_scope
from powerq.errors import InvalidInput, NotFound
from powerq.intents import find_node, request_power
from powerq.models import Batch, Node, PowerEvent, PowerRequest
from powerq.states import Action, DesiredPowerState, RequestStatus
from powerq.tasks import leases
from powerq.tasks.sweeper import sweep_once
from tests.batches.helpers import create, finish, pump_now, requests_of, spec
from tests.factories import make_node

DEADLINE_ERROR = "not started before its batch's deadline ("


def _nodes(session: Session, count: int) -> list[str]:
    names = [f"n{i}" for i in range(1, count + 1)]
    for name in names:
        make_node(session, name)
    return names


def _desired(names: list[str]) -> dict[str, DesiredPowerState | None]:
    with session_scope() as s:
        rows = s.execute(select(Node.name, Node.desired_power_state).where(Node.name.in_(names)))
        return {name: desired for name, desired in rows}


def _statuses(batch_id: uuid.UUID) -> dict[str, RequestStatus]:
    return {r.node.name: r.status for r in requests_of(batch_id)}


def _events(kind: str) -> list[PowerEvent]:
    with session_scope() as s:
        return list(s.scalars(select(PowerEvent).where(PowerEvent.kind == kind)))


def _nodes_accept_a_new_request(names: list[str]) -> bool:
    with session_scope() as s:
        intents = [request_power(s, find_node(s, n), Action.ON, actor="bob") for n in names]
        return all(intent.created for intent in intents)


def _past_deadline(batch_id: uuid.UUID) -> None:
    """Move the batch's deadline (and its requests' start_by) a second into the past."""
    with session_scope() as s:
        past = db_now(s) - timedelta(seconds=1)
        s.execute(update(Batch).where(Batch.id == batch_id).values(deadline_at=past))
        s.execute(
            update(PowerRequest).where(PowerRequest.batch_id == batch_id).values(start_by=past)
        )


# --- the deadline -------------------------------------------------------------------


def test_every_batch_gets_a_deadline_and_its_requests_start_by_it(session: Session) -> None:
    names = _nodes(session, 3)
    created = create(session, spec(Action.OFF, names, stagger_s=10.0, max_in_flight=1))

    batch = created.batch
    assert batch.deadline_at is not None
    # 3 waves of (10 s stagger + 120 s per-request deadline), plus the grace.
    expected = timedelta(seconds=3 * (10 + 120) + DEADLINE_GRACE_S)
    assert batch.deadline_at - batch.created_at == pytest.approx(expected, abs=timedelta(seconds=2))
    assert {r.start_by for r in requests_of(batch.id)} == {batch.deadline_at}


def test_a_given_batch_deadline_is_used(session: Session) -> None:
    names = _nodes(session, 2)
    created = create(session, spec(Action.ON, names, stagger_s=5.0, batch_deadline_s=600.0))

    batch = created.batch
    assert batch.deadline_at is not None
    assert batch.deadline_at - batch.created_at == pytest.approx(
        timedelta(seconds=600), abs=timedelta(seconds=2)
    )


def test_the_default_follows_the_pacing_and_is_bounded() -> None:
    unpaced = spec(Action.OFF, ["a"] * 10)
    staggered = spec(Action.OFF, ["a"] * 10, stagger_s=60.0)
    waves = spec(Action.SOFT_OFF, ["a"] * 10, max_in_flight=3, deadline_s=100.0)
    hourly = spec(Action.OFF, ["a"] * 100, stagger_s=3600.0, max_in_flight=1)

    assert default_window_s(unpaced, 10) == 120 + DEADLINE_GRACE_S
    assert default_window_s(staggered, 10) == 10 * 60 + DEADLINE_GRACE_S  # stagger dominates
    assert default_window_s(waves, 10) == 4 * 100 + DEADLINE_GRACE_S
    assert default_window_s(hourly, 100) == 100 * (3600 + 120) + DEADLINE_GRACE_S
    assert default_window_s(hourly, 200) == MAX_BATCH_DEADLINE_S


@pytest.mark.parametrize(
    ("options", "nodes", "message"),
    [
        # 200 nodes an hour apart need 199 h to start: more than the 7 days a batch may take.
        ({"stagger_s": 3600.0, "max_in_flight": 1}, 200, "need 716400s to start the last one"),
        ({"stagger_s": 3600.0, "batch_deadline_s": 7200.0}, 3, "batch_deadline_s is 7200s"),
    ],
)
def test_pacing_that_cannot_start_every_node_in_time_is_refused(
    options: dict[str, float], nodes: int, message: str
) -> None:
    batch_spec = spec(Action.ON, [f"n{i}" for i in range(nodes)], **options)
    with pytest.raises(InvalidInput, match=message):
        batch_window_s(batch_spec, nodes)


def test_a_batch_deadline_beyond_seven_days_is_refused() -> None:
    with pytest.raises(InvalidInput, match="between 1 and 604800"):
        validate_spec(spec(Action.ON, ["n1"], batch_deadline_s=MAX_BATCH_DEADLINE_S + 1))


def test_the_sweep_fails_unstarted_requests_past_the_deadline_and_frees_their_nodes(
    session: Session,
) -> None:
    names = _nodes(session, 3)
    make_node(session, "other")
    earlier = request_power(session, find_node(session, names[2]), Action.ON, actor="ann")
    session.commit()
    finish([earlier.request.id])  # names[2] was asked to be on before the batch
    created = create(session, spec(Action.OFF, names, stagger_s=3600.0, max_in_flight=1))
    first = requests_of(created.batch.id)[0]
    assert leases.claim(first.id, 60) is not None  # a worker runs the first one
    _past_deadline(created.batch.id)

    report = sweep_once()

    statuses = _statuses(created.batch.id)
    assert statuses == {
        names[0]: RequestStatus.RUNNING,  # claimed: it runs to its end
        names[1]: RequestStatus.FAILED,
        names[2]: RequestStatus.FAILED,
    }
    failed = [r for r in requests_of(created.batch.id) if r.status is RequestStatus.FAILED]
    assert all((r.error or "").startswith(DEADLINE_ERROR) for r in failed)
    assert set(report.expired) >= {r.id for r in failed}
    assert _desired(names) == {
        names[0]: DesiredPowerState.OFF,
        names[1]: None,
        names[2]: DesiredPowerState.ON,
    }
    events = _events("failed")
    assert sorted(e.request_id for e in events) == sorted(r.id for r in failed)  # type: ignore[type-var]
    assert all(
        e.actor == "sweeper" and (e.message or "").startswith(DEADLINE_ERROR) for e in events
    )
    assert _nodes_accept_a_new_request(names[1:])
    with session_scope() as s:
        assert batch_view(s, created.batch.id, results=False).counts["failed"] == 2


def test_expiry_leaves_requests_before_their_start_by_and_claimed_ones_alone(
    session: Session,
) -> None:
    names = _nodes(session, 2)
    created = create(session, spec(Action.OFF, names, max_in_flight=1))
    first = requests_of(created.batch.id)[0]
    assert leases.claim(first.id, 60) is not None

    with session_scope() as s:
        assert expire_unstarted(s) == []  # deadline not reached
    _past_deadline(created.batch.id)
    with session_scope() as s:
        expired = expire_unstarted(s)

    assert [requests_of(created.batch.id)[1].id] == expired
    assert _statuses(created.batch.id)[names[0]] is RequestStatus.RUNNING


def test_the_pump_releases_nothing_at_or_after_its_start_by(session: Session) -> None:
    names = _nodes(session, 2)
    created = create(session, spec(Action.ON, names, stagger_s=30.0, max_in_flight=1))
    first, second = requests_of(created.batch.id)
    with session_scope() as s:
        soon = db_now(s) + timedelta(seconds=20)  # before the second's turn (30 s)
        s.execute(update(PowerRequest).where(PowerRequest.id == second.id).values(start_by=soon))
    finish([first.id])

    assert pump_now() == []


# --- cancelling ---------------------------------------------------------------------


def test_cancel_frees_every_node_of_a_fleet_locking_batch(session: Session) -> None:
    names = _nodes(session, 4)
    earlier = request_power(session, find_node(session, names[3]), Action.ON, actor="ann")
    session.commit()
    finish([earlier.request.id])
    created = create(session, spec(Action.OFF, names, stagger_s=3600.0, max_in_flight=1))
    assert set(_desired(names).values()) == {DesiredPowerState.OFF}

    with session_scope() as s:
        result = cancel_batch(s, created.batch.id, actor="carol")
        cancelled_at = result.batch.cancelled_at

    own = requests_of(created.batch.id)
    assert sorted(e.request_id for e in result.cancelled) == sorted(r.id for r in own)
    assert [e.node_name for e in result.cancelled] == sorted(names)
    assert result.running == [] and cancelled_at is not None
    assert set(_statuses(created.batch.id).values()) == {RequestStatus.CANCELLED}
    assert all("cancelled by carol with batch" in (r.error or "") for r in own)
    assert _desired(names) == {**dict.fromkeys(names[:3]), names[3]: DesiredPowerState.ON}
    events = _events("cancelled")
    assert len(events) == 4 and {e.actor for e in events} == {"carol"}
    assert pump_now() == []
    assert _nodes_accept_a_new_request(names)  # no 409: nothing outstanding

    with session_scope() as s:
        again = cancel_batch(s, created.batch.id, actor="carol")
        assert (again.cancelled, again.running) == ([], [])
        assert again.batch.cancelled_at == cancelled_at


def test_cancel_leaves_running_requests_to_finish(session: Session) -> None:
    names = _nodes(session, 3)
    created = create(session, spec(Action.OFF, names, max_in_flight=2))
    first = requests_of(created.batch.id)[0]
    assert leases.claim(first.id, 60) is not None

    with session_scope() as s:
        result = cancel_batch(s, created.batch.id, actor="carol")

    assert [(e.node_name, e.request_id) for e in result.running] == [(names[0], first.id)]
    assert [e.node_name for e in result.cancelled] == names[1:]
    assert _statuses(created.batch.id) == {
        names[0]: RequestStatus.RUNNING,
        names[1]: RequestStatus.CANCELLED,
        names[2]: RequestStatus.CANCELLED,
    }
    assert _desired(names) == {names[0]: DesiredPowerState.OFF, names[1]: None, names[2]: None}


def test_the_pump_never_releases_a_cancelled_batch(session: Session) -> None:
    names = _nodes(session, 2)
    created = create(session, spec(Action.OFF, names, max_in_flight=1))
    with session_scope() as s:  # as if a cancel had marked it but left a request held
        s.execute(update(Batch).where(Batch.id == created.batch.id).values(cancelled_at=db_now(s)))
    finish([requests_of(created.batch.id)[0].id])

    assert pump_now() == []


def test_cancelling_an_unknown_batch_is_not_found(db: None) -> None:
    with session_scope() as s, pytest.raises(NotFound, match="no batch"):
        cancel_batch(s, uuid.uuid4(), actor="carol")
