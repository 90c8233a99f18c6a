"""Deleting a node keeps its audit trail: the row is only marked deleted, its
requests and events stay (requests readable by id), and the node is gone from
every lookup by name, listing, batch and monitor scan; its name and BMC
endpoint can be registered again."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from powerq.models import Node, PowerEvent, PowerRequest
from powerq.tasks.monitor import due_for_refresh
from tests.api.helpers import assert_problem
from tests.factories import make_node


def _finished_request(client: FlaskClient, operator: dict[str, str], name: str) -> str:
    """Request 'on' for ``name`` and cancel it (no worker needed); return its id."""
    response = client.post(f"/v1/nodes/{name}/power", json={"action": "on"}, headers=operator)
    assert response.status_code == 202, response.get_json()
    request_id = str(response.get_json()["request"]["id"])
    assert client.delete(f"/v1/requests/{request_id}", headers=operator).status_code == 200
    return request_id


@pytest.fixture
def deleted(
    client: FlaskClient, admin: dict[str, str], operator: dict[str, str], session: Session
) -> dict[str, Any]:
    """Node 'gone' (with one finished request) deleted by the admin token; 'kept' live."""
    node = make_node(session, "gone", address="10.7.0.1", port=623, tags=("rack7",))
    make_node(session, "kept", address="10.7.0.2", port=623, tags=("rack7",))
    request_id = _finished_request(client, operator, "gone")
    assert client.delete("/v1/nodes/gone", headers=admin).status_code == 204
    return {"id": node.id, "request_id": request_id}


def test_requests_and_events_of_a_deleted_node_stay(
    client: FlaskClient, reader: dict[str, str], session: Session, deleted: dict[str, Any]
) -> None:
    session.expire_all()
    node = session.get(Node, deleted["id"])
    assert node is not None and node.deleted_at is not None
    request = session.get(PowerRequest, uuid.UUID(deleted["request_id"]))
    assert request is not None and request.node_id == deleted["id"]
    events = session.scalars(
        select(PowerEvent).where(PowerEvent.node_id == deleted["id"]).order_by(PowerEvent.id)
    ).all()
    assert [(e.kind, e.actor) for e in events] == [
        ("registered", "test"),
        ("requested", "operator-token"),
        ("cancelled", "operator-token"),
        ("deleted", "admin-token"),
    ]

    body = client.get(f"/v1/requests/{deleted['request_id']}", headers=reader).get_json()
    assert (body["id"], body["node"], body["status"]) == (
        deleted["request_id"],
        "gone",
        "cancelled",
    )


def test_a_deleted_node_is_gone_from_every_lookup(
    client: FlaskClient,
    reader: dict[str, str],
    operator: dict[str, str],
    admin: dict[str, str],
    deleted: dict[str, Any],
) -> None:
    listed = client.get("/v1/nodes", headers=reader).get_json()
    assert [item["name"] for item in listed["items"]] == ["kept"] and listed["total"] == 1
    for path in ("/v1/nodes/gone", "/v1/nodes/gone/requests", "/v1/nodes/gone/events"):
        assert_problem(client.get(path, headers=reader), 404)
    power = client.post("/v1/nodes/gone/power", json={"action": "on"}, headers=operator)
    assert_problem(power, 404)
    assert_problem(client.patch("/v1/nodes/gone", json={"maintenance": True}, headers=admin), 404)
    assert_problem(client.delete("/v1/nodes/gone", headers=admin), 404)


def test_batches_select_only_live_nodes(
    client: FlaskClient, operator: dict[str, str], deleted: dict[str, Any]
) -> None:
    named = client.post(
        "/v1/batches", json={"action": "on", "nodes": ["kept", "gone"]}, headers=operator
    )
    assert "gone" in assert_problem(named, 404)["detail"]

    for selector in ({"all": True}, {"tags": ["rack7"]}, {"name_glob": "*"}):
        body = {"action": "query", "selector": selector}
        batch = client.post("/v1/batches", json=body, headers=operator)
        assert batch.status_code == 201, batch.get_json()
        assert [node["node"] for node in batch.get_json()["nodes"]] == ["kept"]


def test_the_monitor_skips_deleted_nodes(deleted: dict[str, Any]) -> None:
    assert [name for _, name in due_for_refresh(60.0)] == ["kept"]


def test_the_name_and_bmc_can_be_registered_again(
    client: FlaskClient,
    admin: dict[str, str],
    reader: dict[str, str],
    session: Session,
    deleted: dict[str, Any],
) -> None:
    again = {
        "name": "gone",
        "driver": "ipmi",
        "address": "10.7.0.1",
        "username": "admin",
        "password": "pw",
    }
    created = client.post("/v1/nodes", json=again, headers=admin)
    assert created.status_code == 201, created.get_json()

    assert client.get("/v1/nodes/gone/requests", headers=reader).get_json()["total"] == 0
    session.expire_all()
    rows = session.scalars(select(Node).where(Node.name == "gone").order_by(Node.id)).all()
    assert [(row.id == deleted["id"], row.deleted_at is None) for row in rows] == [
        (True, False),
        (False, True),
    ]
    old = session.get(PowerRequest, uuid.UUID(deleted["request_id"]))
    assert old is not None and old.node_id == deleted["id"]


def test_import_ignores_deleted_nodes(
    client: FlaskClient, admin: dict[str, str], deleted: dict[str, Any]
) -> None:
    row = {
        "name": "gone",
        "driver": "sim",
        "address": "10.7.0.1",
        "username": "admin",
        "password": "pw",
    }
    report = client.post("/v1/nodes/import", json=[row], headers=admin).get_json()
    assert [r["outcome"] for r in report["rows"]] == ["created"]


def test_delete_with_an_outstanding_request_is_refused_and_keeps_the_node(
    client: FlaskClient,
    admin: dict[str, str],
    operator: dict[str, str],
    reader: dict[str, str],
    session: Session,
) -> None:
    make_node(session, "busy")
    response = client.post("/v1/nodes/busy/power", json={"action": "off"}, headers=operator)
    request_id = response.get_json()["request"]["id"]

    body = assert_problem(client.delete("/v1/nodes/busy", headers=admin), 409)

    assert body["outstanding"]["id"] == request_id
    assert "outstanding 'off' request" in body["detail"]
    assert client.get("/v1/nodes/busy", headers=reader).status_code == 200
