"""intents.record_new, the API's one-statement path: what it answers is the row as
stored, it writes what request_power writes, and it leaves every other case to
request_power."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from powerq.db import session_scope
from powerq.errors import InvalidInput, NotFound
from powerq.intents import record_new
from powerq.models import Node, PowerEvent, PowerRequest
from powerq.states import Action, BootDevice
from tests.factories import make_node

CASES: list[dict[str, Any]] = [
    {"action": Action.ON, "dispatching": True},
    {"action": Action.OFF},
    {"action": Action.SOFT_OFF, "soft_fallback": True, "deadline_s": 30.0},
    {"action": Action.CYCLE, "boot_device": BootDevice.PXE, "boot_persistent": True},
    {"action": Action.QUERY, "idempotency_key": "k-1", "dispatching": True},
]


@pytest.fixture
def node(session: Session) -> Node:
    return make_node(session, "node-1")


@pytest.mark.parametrize("options", CASES, ids=[str(c["action"]) for c in CASES])
def test_the_answer_is_the_row_as_stored(
    node: Node, session: Session, options: dict[str, Any]
) -> None:
    with session_scope() as s:
        answered = record_new(s, "node-1", actor="alice", **options)

    assert answered is not None
    stored = session.get(PowerRequest, answered["id"])
    assert stored is not None
    columns = {c.name: getattr(stored, c.name) for c in PowerRequest.__table__.c}
    assert answered == columns
    assert (stored.dispatched_at is not None) is options.get("dispatching", False)


@pytest.mark.parametrize(
    ("action", "desired", "before"), [(Action.OFF, "off", None), (Action.QUERY, None, None)]
)
def test_it_writes_the_desired_state_and_the_event(
    node: Node, session: Session, action: Action, desired: str | None, before: str | None
) -> None:
    with session_scope() as s:
        answered = record_new(s, "node-1", action, actor="alice")
    assert answered is not None

    session.expire_all()
    refreshed = session.get(Node, node.id)
    assert refreshed is not None
    assert (refreshed.desired_power_state and refreshed.desired_power_state.value) == desired
    assert (refreshed.desired_power_state_at is not None) is (desired is not None)
    event = session.scalars(select(PowerEvent).where(PowerEvent.request_id == answered["id"])).one()
    assert (event.kind, event.actor, event.message) == ("requested", "alice", f"{action} requested")
    assert event.detail == {
        "action": action.value,
        "desired_power_state": desired,
        "desired_before": before,
    }


def test_an_outstanding_request_leaves_everything_to_request_power(
    node: Node, session: Session
) -> None:
    with session_scope() as s:
        assert record_new(s, "node-1", Action.ON, actor="alice") is not None
    with session_scope() as s:
        assert record_new(s, "node-1", Action.OFF, actor="bob") is None

    session.expire_all()
    assert len(session.scalars(select(PowerRequest)).all()) == 1
    assert len(session.scalars(select(PowerEvent).where(PowerEvent.kind == "requested")).all()) == 1
    refreshed = session.get(Node, node.id)
    assert refreshed is not None and refreshed.desired_power_state is not None
    assert refreshed.desired_power_state.value == "on"


def test_a_deleted_or_unknown_node_is_not_found(node: Node, session: Session) -> None:
    node.deleted_at = node.created_at
    session.commit()
    for name in ("node-1", "ghost"):
        with pytest.raises(NotFound), session_scope() as s:
            record_new(s, name, Action.ON, actor="alice")


@pytest.mark.parametrize(
    "options", [{"deadline_s": 0.5}, {"soft_fallback": True}], ids=["deadline", "fallback"]
)
def test_invalid_options_write_nothing(
    node: Node, session: Session, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInput), session_scope() as s:
        record_new(s, "node-1", Action.ON, actor="alice", **options)
    assert session.scalars(select(PowerRequest)).all() == []
