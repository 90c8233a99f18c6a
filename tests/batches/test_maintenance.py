"""Nodes in maintenance and batches: left out of selectors unless asked for,
reported as skipped; named nodes run (as single requests do)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from powerq.batches import Selector, batch_view, create_batch
from powerq.errors import NotFound
from powerq.models import Batch, Node, PowerRequest
from powerq.states import Action
from tests.api.helpers import assert_problem
from tests.batches.helpers import create, spec
from tests.factories import make_node
from tests.statements import count_statements


@pytest.fixture
def fleet(session: Session) -> list[str]:
    """r1-a, r1-b, r1-c tagged rack1; r1-b in maintenance."""
    names = ["r1-a", "r1-b", "r1-c"]
    for name in names:
        make_node(session, name, tags=("rack1",))
    node = session.scalars(select(Node).where(Node.name == "r1-b")).one()
    node.maintenance, node.maintenance_reason = True, "PSU swap"
    session.commit()
    return names


def _requested(session: Session) -> list[str]:
    session.expire_all()
    rows = session.scalars(select(PowerRequest).order_by(PowerRequest.created_at))
    return sorted(row.node.name for row in rows)


@pytest.mark.parametrize(
    "selector",
    [Selector(all=True), Selector(tags=("rack1",)), Selector(name_glob="r1-*")],
    ids=["all", "tag", "glob"],
)
def test_a_selector_leaves_nodes_in_maintenance_out_and_reports_them(
    session: Session, fleet: list[str], selector: Selector
) -> None:
    created = create(session, spec(Action.OFF, selector=selector))

    assert [member.node for member in created.members] == ["r1-a", "r1-c"]
    assert _requested(session) == ["r1-a", "r1-c"]
    view = batch_view(session, created.batch.id)
    assert view.total == 2
    assert created.batch.selector["skipped"] == [{"node": "r1-b", "reason": "maintenance"}]


def test_include_maintenance_selects_them_too(session: Session, fleet: list[str]) -> None:
    created = create(
        session, spec(Action.OFF, selector=Selector(all=True), include_maintenance=True)
    )

    assert [member.node for member in created.members] == fleet
    assert "skipped" not in created.batch.selector
    assert created.batch.selector["include_maintenance"] is True


def test_named_nodes_run_in_maintenance_or_not(session: Session, fleet: list[str]) -> None:
    created = create(session, spec(Action.OFF, ["r1-b", "r1-a"]))

    assert [(m.node, m.outcome) for m in created.members] == [
        ("r1-b", "created"),
        ("r1-a", "created"),
    ]
    assert created.batch.selector == {"nodes": ["r1-b", "r1-a"]}


def test_a_selector_matching_only_nodes_in_maintenance_queues_nothing(
    session: Session, fleet: list[str]
) -> None:
    with pytest.raises(NotFound) as refused:
        create_batch(session, spec(Action.ON, selector=Selector(name_glob="r1-b")), actor="ops")
    session.rollback()

    assert refused.value.detail == (
        "every node the selector name 'r1-b' matches is in maintenance ('r1-b'); "
        "set include_maintenance to run on them too"
    )
    assert refused.value.extra["skipped"] == [{"node": "r1-b", "reason": "maintenance"}]
    assert _requested(session) == []
    assert session.scalars(select(Batch)).all() == []


def test_skipping_costs_no_statement(session: Session, fleet: list[str]) -> None:
    with count_statements() as skipping:
        create_batch(session, spec(Action.OFF, selector=Selector(all=True)), actor="ops")
    session.rollback()
    with count_statements() as including:
        create_batch(
            session,
            spec(Action.OFF, selector=Selector(all=True), include_maintenance=True),
            actor="ops",
        )
    session.rollback()

    assert len(skipping) == len(including)


def test_the_api_reports_skipped_nodes_and_takes_include_maintenance(
    client: FlaskClient, operator: dict[str, str], reader: dict[str, str], fleet: list[str]
) -> None:
    skipping = client.post(
        "/v1/batches", json={"action": "off", "selector": {"tags": ["rack1"]}}, headers=operator
    )
    including = client.post(
        "/v1/batches",
        json={"action": "on", "selector": {"all": True}, "include_maintenance": True},
        headers=operator,
    )
    only_maintenance = client.post(
        "/v1/batches", json={"action": "on", "selector": {"name_glob": "r1-b"}}, headers=operator
    )

    body = skipping.get_json()
    assert skipping.status_code == 201, body
    assert body["skipped"] == [{"node": "r1-b", "reason": "maintenance"}]
    assert body["total"] == 2 and [n["node"] for n in body["nodes"]] == ["r1-a", "r1-c"]
    assert body["selector"] == {"tags": ["rack1"], "name_glob": None, "all": False}
    shown = client.get(f"/v1/batches/{body['id']}", headers=reader).get_json()
    assert shown["skipped"] == body["skipped"]
    assert (
        client.get("/v1/batches", headers=reader).get_json()["items"][-1]["skipped"]
        == (body["skipped"])
    )
    assert including.status_code == 201, including.get_json()
    assert including.get_json()["skipped"] == [] and including.get_json()["total"] == 3
    problem = assert_problem(only_maintenance, 404)
    assert "in maintenance" in problem["detail"]
    assert problem["skipped"] == [{"node": "r1-b", "reason": "maintenance"}]
