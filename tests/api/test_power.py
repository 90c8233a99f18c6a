"""POST/GET /v1/nodes/{name}/power: 202 new, 200 same, 409 other; desired state; dispatch."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from powerq.config import get_settings
from powerq.models import Node, PowerEvent, PowerRequest
from powerq.states import RequestStatus
from powerq.tasks.routing import lane_for, lane_queue
from tests.api.helpers import assert_problem, counts
from tests.factories import make_node

POWER = "/v1/nodes/node-1/power"


@pytest.fixture
def node(session: Session) -> Node:
    return make_node(session, "node-1")


def _lane_messages(services: Any, node_name: str) -> list[dict[str, Any]]:
    queue = lane_queue(lane_for(node_name, get_settings().lanes))
    raw = redis.Redis.from_url(services.broker_url).lrange(queue, 0, -1)
    return [json.loads(message) for message in raw]


def test_a_new_request_is_202_with_location_and_wakes_the_lane(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session, services: Any
) -> None:
    response = client.post(POWER, json={"action": "on"}, headers=operator)

    assert response.status_code == 202
    body = response.get_json()
    assert body["created"] is True
    assert body["dispatched"] is True
    request_id = body["request"]["id"]
    assert response.headers["Location"] == f"/v1/requests/{request_id}"
    assert body["request"]["status"] == "pending"
    assert body["request"]["requested_by"] == "operator-token"
    row = session.get(PowerRequest, request_id)
    assert row is not None and row.dispatched_at is not None
    messages = _lane_messages(services, "node-1")
    assert len(messages) == 1
    assert messages[0]["headers"]["task"] == "powerq.step"
    assert request_id in messages[0]["headers"]["argsrepr"]
    assert messages[0]["headers"]["kwargsrepr"] == "{'node': 'node-1', 'action': 'on'}"


def test_the_location_serves_the_request_which_stays_pending(
    client: FlaskClient, operator: dict[str, str], reader: dict[str, str], node: Node
) -> None:
    created = client.post(POWER, json={"action": "off"}, headers=operator)
    fetched = client.get(created.headers["Location"], headers=reader)

    assert fetched.status_code == 200
    assert fetched.get_json()["id"] == created.get_json()["request"]["id"]
    assert fetched.get_json()["status"] == "pending"  # no worker here: no faked progress
    assert fetched.get_json()["attempt"] == 0


def test_the_same_action_outstanding_is_answered_200_with_that_request(
    client: FlaskClient, operator: dict[str, str], admin: dict[str, str], node: Node
) -> None:
    first = client.post(POWER, json={"action": "cycle"}, headers=operator)
    second = client.post(POWER, json={"action": "cycle"}, headers=admin)

    assert second.status_code == 200
    assert second.get_json()["created"] is False
    assert second.get_json()["request"] == {
        **first.get_json()["request"],
        "dispatched_at": second.get_json()["request"]["dispatched_at"],
        "dispatch_count": 1,
        "updated_at": second.get_json()["request"]["updated_at"],
    }
    assert second.get_json()["dispatched"] is True


def test_another_action_outstanding_is_refused_409_with_the_outstanding_request(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    first = client.post(POWER, json={"action": "on"}, headers=operator).get_json()
    before = counts(session)

    body = assert_problem(client.post(POWER, json={"action": "off"}, headers=operator), 409)

    assert body["outstanding"]["id"] == first["request"]["id"]
    assert body["outstanding"]["action"] == "on"
    assert counts(session) == before
    session.expire_all()
    assert session.get(Node, node.id).desired_power_state.value == "on"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("action", "desired"),
    [
        ("on", "on"),
        ("off", "off"),
        ("soft_off", "off"),
        ("cycle", "on"),
        ("reset", "on"),
        ("query", None),
    ],
)
def test_each_action_sets_the_desired_state_in_the_same_transaction(
    client: FlaskClient,
    operator: dict[str, str],
    reader: dict[str, str],
    node: Node,
    action: str,
    desired: str | None,
) -> None:
    client.post(POWER, json={"action": action}, headers=operator)

    status = client.get(POWER, headers=reader).get_json()
    assert status["desired_power_state"] == desired
    assert status["outstanding_request"]["action"] == action


def test_query_leaves_an_earlier_desired_state(
    client: FlaskClient,
    operator: dict[str, str],
    reader: dict[str, str],
    node: Node,
    session: Session,
) -> None:
    request_id = client.post(POWER, json={"action": "off"}, headers=operator).get_json()
    session.get(PowerRequest, request_id["request"]["id"]).status = RequestStatus.SUCCEEDED  # type: ignore[union-attr]
    session.commit()

    client.post(POWER, json={"action": "query"}, headers=operator)

    assert client.get(POWER, headers=reader).get_json()["desired_power_state"] == "off"


def test_options_are_recorded(client: FlaskClient, operator: dict[str, str], node: Node) -> None:
    body = client.post(
        POWER,
        json={"action": "soft_off", "deadline_s": 30, "soft_fallback": True},
        headers=operator,
    ).get_json()

    assert body["request"]["deadline_s"] == 30.0
    assert body["request"]["soft_fallback"] is True


def test_the_actor_is_on_the_request_and_its_event(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    request_id = client.post(POWER, json={"action": "on"}, headers=operator).get_json()["request"][
        "id"
    ]

    event = session.scalars(select(PowerEvent).where(PowerEvent.request_id == request_id)).one()
    assert event.actor == "operator-token"
    assert event.kind == "requested"


def test_broker_unreachable_still_202_durable_and_undispatched(
    client: FlaskClient,
    operator: dict[str, str],
    node: Node,
    session: Session,
    dead_broker: None,
    services: Any,
) -> None:
    started = time.monotonic()
    response = client.post(POWER, json={"action": "off"}, headers=operator)

    assert time.monotonic() - started < 5  # the user is not kept waiting for the broker
    assert response.status_code == 202
    assert response.get_json()["dispatched"] is False
    row = session.get(PowerRequest, response.get_json()["request"]["id"])
    assert row is not None
    assert row.status is RequestStatus.PENDING
    assert row.dispatched_at is None
    assert row.dispatch_count == 0
    assert _lane_messages(services, "node-1") == []


def test_an_unexpected_dispatch_failure_still_answers_202(
    client: FlaskClient,
    operator: dict[str, str],
    node: Node,
    session: Session,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("pool closed")

    monkeypatch.setattr("powerq.tasks.dispatch.send_step", broken)
    response = client.post(POWER, json={"action": "on"}, headers=operator)

    assert response.status_code == 202
    assert response.get_json()["dispatched"] is False
    assert session.get(PowerRequest, response.get_json()["request"]["id"]) is not None


def test_get_power_reports_observed_desired_and_outstanding(
    client: FlaskClient, operator: dict[str, str], reader: dict[str, str], node: Node
) -> None:
    assert client.get(POWER, headers=reader).get_json() == {
        "node": "node-1",
        "power_state": "unknown",
        "power_state_at": None,
        "desired_power_state": None,
        "desired_power_state_at": None,
        "in_sync": None,
        "outstanding_request": None,
        "maintenance": False,
        "power_fault": False,
        "power_fault_reason": None,
        "last_error": None,
        "last_checked_at": None,
    }
    client.post(POWER, json={"action": "on"}, headers=operator)
    status = client.get(POWER, headers=reader).get_json()
    assert status["desired_power_state"] == "on"
    assert status["desired_power_state_at"].endswith("Z")
    assert status["outstanding_request"]["status"] == "pending"


BAD_INPUTS: list[tuple[str, dict[str, Any], int]] = [
    ("unknown action", {"json": {"action": "explode"}}, 422),
    ("action of the wrong type", {"json": {"action": 1}}, 422),
    ("missing action", {"json": {}}, 422),
    ("deadline of the wrong type", {"json": {"action": "on", "deadline_s": "10"}}, 422),
    ("deadline out of range", {"json": {"action": "on", "deadline_s": 0.5}}, 422),
    ("null deadline", {"json": {"action": "on", "deadline_s": None}}, 422),
    ("boolean of the wrong type", {"json": {"action": "soft_off", "soft_fallback": "yes"}}, 422),
    ("soft_fallback on a hard action", {"json": {"action": "off", "soft_fallback": True}}, 422),
    ("unknown member", {"json": {"action": "on", "force": True}}, 422),
    ("a list, not an object", {"json": ["on"]}, 422),
    ("malformed JSON", {"data": '{"action": "on"', "content_type": "application/json"}, 400),
    ("empty body", {"data": "", "content_type": "application/json"}, 400),
    ("not UTF-8", {"data": b"\xff\xfe", "content_type": "application/json"}, 400),
    ("oversize body", {"data": "x" * 2_000_000, "content_type": "application/json"}, 413),
    (
        "invalid Idempotency-Key",
        {"json": {"action": "on"}, "headers": {"Idempotency-Key": "a b"}},
        422,
    ),
]


@pytest.mark.parametrize(("why", "kwargs", "status"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_problem_and_changes_nothing(
    client: FlaskClient,
    operator: dict[str, str],
    node: Node,
    session: Session,
    services: Any,
    why: str,
    kwargs: dict[str, Any],
    status: int,
) -> None:
    before = counts(session)
    headers = {**operator, **kwargs.pop("headers", {})}

    body = assert_problem(client.post(POWER, headers=headers, **kwargs), status)

    assert body["detail"]
    assert counts(session) == before
    session.expire_all()
    assert session.get(Node, node.id).desired_power_state is None  # type: ignore[union-attr]
    assert _lane_messages(services, "node-1") == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/nodes/ghost/power",
        "/v1/nodes/bad%20name/power",
        "/v1/nodes/import/power",
        "/v1/nodes/-x/power",
    ],
)
def test_unknown_or_invalid_node_is_404(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session, path: str
) -> None:
    before = counts(session)
    assert_problem(client.post(path, json={"action": "on"}, headers=operator), 404)
    assert counts(session) == before


def test_validation_problem_names_each_field(
    client: FlaskClient, operator: dict[str, str], node: Node
) -> None:
    body = assert_problem(
        client.post(POWER, json={"action": "x", "deadline_s": "y"}, headers=operator), 422
    )
    assert {error["field"] for error in body["errors"]} == {"action", "deadline_s"}
    assert "action" in body["detail"] and "deadline_s" in body["detail"]
