"""Requests and history: read one, cancel pending (200) vs claimed (409), lists."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

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


# --- GET /v1/requests ----------------------------------------------------------------


def _listed(client: FlaskClient, headers: dict[str, str], query: str) -> dict[str, Any]:
    response = client.get(f"/v1/requests?{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


def test_requests_are_listed_newest_first_filtered_by_node_status_and_age(
    client: FlaskClient, operator: dict[str, str], reader: dict[str, str], session: Session,
    node: Node,
) -> None:  # fmt: skip
    make_node(session, "node-2", address="127.0.0.2")
    old = _request(client, operator, "on")
    _set_status(session, old, RequestStatus.SUCCEEDED)
    row = session.get(PowerRequest, uuid.UUID(old))
    assert row is not None
    row.created_at = datetime.now(UTC) - timedelta(hours=3)
    session.commit()
    newer = _request(client, operator, "off")
    other = client.post("/v1/nodes/node-2/power", json={"action": "on"}, headers=operator)
    other_id = other.get_json()["request"]["id"]

    every = _listed(client, reader, "")
    of_node = _listed(client, reader, "node=node-1")
    pending = _listed(client, reader, "status=pending")
    either = _listed(client, reader, "status=pending,succeeded&node=node-1")
    recent = _listed(client, reader, "since=1h")
    hours = (datetime.now(UTC) - timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    since_time = _listed(client, reader, f"since={hours}")
    page = _listed(client, reader, "limit=1&offset=1")

    assert [r["id"] for r in every["items"]] == [other_id, newer, old]
    assert every["total"] == 3
    assert [r["id"] for r in of_node["items"]] == [newer, old]
    assert {r["id"] for r in pending["items"]} == {newer, other_id}
    assert [r["id"] for r in either["items"]] == [newer, old]
    assert {r["id"] for r in recent["items"]} == {newer, other_id}
    assert since_time["total"] == 3
    assert ([r["id"] for r in page["items"]], page["total"]) == ([newer], 3)


@pytest.mark.parametrize(
    "query",
    ["status=done", "status=pending,", "since=yesterday", "since=2026-12-01T10:00:00",
     "since=15", "limit=0", "node=bad name", "colour=red"],
)  # fmt: skip
def test_a_bad_request_filter_is_a_422_problem(
    client: FlaskClient, reader: dict[str, str], node: Node, query: str
) -> None:
    problem = assert_problem(client.get(f"/v1/requests?{query}", headers=reader), 422)
    assert problem["detail"]


def test_listing_requests_of_an_unknown_node_is_404_and_needs_a_token(
    client: FlaskClient, reader: dict[str, str], node: Node
) -> None:
    problem = assert_problem(client.get("/v1/requests?node=ghost", headers=reader), 404)

    assert problem["detail"] == "no node named 'ghost'"
    assert_problem(client.get("/v1/requests"), 401)
