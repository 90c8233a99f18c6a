"""Requests and history: read one, cancel pending (200) vs claimed (409), lists."""

from __future__ import annotations

import uuid

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from powerq.models import Node, PowerRequest
from powerq.states import RequestStatus
from tests.api.helpers import assert_problem, counts
from tests.factories import make_node

POWER = "/v1/nodes/node-1/power"


@pytest.fixture
def node(session: Session) -> Node:
    return make_node(session, "node-1")


def _request(client: FlaskClient, headers: dict[str, str], action: str = "on") -> str:
    response = client.post(POWER, json={"action": action}, headers=headers)
    assert response.status_code == 202
    return str(response.get_json()["request"]["id"])


def _set_status(session: Session, request_id: str, status: RequestStatus) -> None:
    row = session.get(PowerRequest, uuid.UUID(request_id))
    assert row is not None
    row.status = status
    session.commit()


def test_get_request_serialises_times_in_utc_and_enums_as_strings(
    client: FlaskClient, operator: dict[str, str], reader: dict[str, str], node: Node
) -> None:
    request_id = _request(client, operator, "soft_off")

    body = client.get(f"/v1/requests/{request_id}", headers=reader).get_json()

    assert body["action"] == "soft_off"
    assert body["status"] == "pending"
    assert body["next_step"] == "query"
    assert body["node"] == "node-1"
    assert body["created_at"].endswith("Z")


@pytest.mark.parametrize(
    "path",
    ["/v1/requests/00000000-0000-4000-8000-000000000000", "/v1/requests/not-a-uuid"],
    ids=["unknown-uuid", "not-a-uuid"],
)
def test_unknown_request_is_404(
    client: FlaskClient, reader: dict[str, str], node: Node, path: str
) -> None:
    assert_problem(client.get(path, headers=reader), 404)


def test_cancel_a_pending_request(
    client: FlaskClient, operator: dict[str, str], reader: dict[str, str], node: Node
) -> None:
    request_id = _request(client, operator)

    response = client.delete(f"/v1/requests/{request_id}", headers=operator)

    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled"
    assert response.get_json()["finished_at"].endswith("Z")
    power = client.get(POWER, headers=reader).get_json()
    assert power["desired_power_state"] is None  # the withdrawn intent is not kept
    assert power["outstanding_request"] is None
    events = client.get("/v1/nodes/node-1/events", headers=reader).get_json()["items"]
    assert (events[0]["kind"], events[0]["actor"]) == ("cancelled", "operator-token")


@pytest.mark.parametrize(
    "status", [RequestStatus.RUNNING, RequestStatus.SUCCEEDED, RequestStatus.CANCELLED]
)
def test_a_claimed_or_finished_request_is_not_cancelled(
    client: FlaskClient,
    operator: dict[str, str],
    node: Node,
    session: Session,
    status: RequestStatus,
) -> None:
    request_id = _request(client, operator)
    _set_status(session, request_id, status)
    before = counts(session)

    body = assert_problem(client.delete(f"/v1/requests/{request_id}", headers=operator), 409)

    assert body["request"]["id"] == request_id
    assert body["request"]["status"] == status.value
    assert counts(session) == before
    session.expire_all()
    assert session.get(PowerRequest, uuid.UUID(request_id)).status is status  # type: ignore[union-attr]


def test_a_running_request_still_refuses_another_action(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    request_id = _request(client, operator, "on")
    _set_status(session, request_id, RequestStatus.RUNNING)

    body = assert_problem(client.post(POWER, json={"action": "off"}, headers=operator), 409)
    assert body["outstanding"]["status"] == "running"
    same = client.post(POWER, json={"action": "on"}, headers=operator)
    assert same.status_code == 200
    assert same.get_json()["request"]["id"] == request_id


def test_cancel_unknown_request_is_404(
    client: FlaskClient, operator: dict[str, str], node: Node
) -> None:
    assert_problem(client.delete(f"/v1/requests/{uuid.uuid4()}", headers=operator), 404)


def test_history_is_newest_first_and_paged(
    client: FlaskClient,
    operator: dict[str, str],
    reader: dict[str, str],
    node: Node,
    session: Session,
) -> None:
    ids = []
    for action in ("on", "off", "cycle"):
        ids.append(_request(client, operator, action))
        _set_status(session, ids[-1], RequestStatus.SUCCEEDED)

    page = client.get("/v1/nodes/node-1/requests?limit=2", headers=reader).get_json()
    rest = client.get("/v1/nodes/node-1/requests?limit=2&offset=2", headers=reader).get_json()

    assert [item["id"] for item in page["items"] + rest["items"]] == ids[::-1]
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
    assert [item["action"] for item in page["items"]] == ["cycle", "off"]


def test_events_name_their_actor_and_time(
    client: FlaskClient, operator: dict[str, str], reader: dict[str, str], node: Node
) -> None:
    request_id = _request(client, operator)

    events = client.get("/v1/nodes/node-1/events", headers=reader).get_json()

    assert [e["kind"] for e in events["items"]] == ["requested", "registered"]
    requested = events["items"][0]
    assert requested["actor"] == "operator-token"
    assert requested["request_id"] == request_id
    assert requested["created_at"].endswith("Z")
    assert requested["node"] == "node-1"


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "offset=-1", "limit=x", "page=2"])
def test_bad_paging_is_422(
    client: FlaskClient, reader: dict[str, str], node: Node, query: str
) -> None:
    assert_problem(client.get(f"/v1/nodes/node-1/requests?{query}", headers=reader), 422)


def test_history_of_unknown_node_is_404(client: FlaskClient, reader: dict[str, str]) -> None:
    assert_problem(client.get("/v1/nodes/ghost/events", headers=reader), 404)
    assert_problem(client.get("/v1/nodes/ghost/requests", headers=reader), 404)
