"""GET /v1/summary (the fleet's counts, one statement whatever the fleet's size)
and the node list's fleet-page parameters (condition, changed_since)."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from powerq.db import utcnow
from powerq.models import Node, PowerRequest
from powerq.states import PowerState
from tests.api.helpers import assert_problem
from tests.statements import count_statements
from tests.ui.helpers import add_request, bulk_fleet, node_in_state


def _mixed(session: Session) -> None:
    node_in_state(session, "synced", observed="on", desired="on")
    node_in_state(session, "drift", observed="off", desired="on")
    busy = node_in_state(session, "busy", observed="on", desired="off")
    add_request(session, busy, "off", "running")
    waiting = node_in_state(session, "waiting", observed="off", desired="on")
    add_request(session, waiting, "on", "pending")
    node_in_state(session, "unknown", observed="unknown", power_fault=True, maintenance=True)
    gone = node_in_state(session, "gone", observed="on")
    gone.deleted_at = utcnow()
    session.commit()


def test_the_summary_counts_the_live_fleet(
    client: FlaskClient, session: Session, reader: dict[str, str], operator: dict[str, str]
) -> None:
    _mixed(session)
    batch = client.post("/v1/batches", json={"action": "on", "nodes": ["synced"]}, headers=operator)
    assert batch.status_code == 201, batch.get_json()

    body = client.get("/v1/summary", headers=reader).get_json()

    assert body["nodes"] == 5
    assert body["observed"] == {"on": 2, "off": 2, "unknown": 1}
    assert body["desired"] == {"on": 3, "off": 1, "none": 1}
    assert (body["in_sync"], body["drift"], body["converging"]) == (1, 1, 2)
    assert (body["busy"], body["maintenance"], body["power_fault"]) == (3, 1, 1)
    assert body["requests"] == {"held": 0, "pending": 2, "running": 1}
    assert body["batches_running"] == 1
    assert datetime.fromisoformat(body["as_of"]) > utcnow() - timedelta(minutes=1)


def test_the_summary_is_one_statement_whatever_the_fleet_size(
    client: FlaskClient, session: Session, reader: dict[str, str]
) -> None:
    assert client.get("/v1/summary", headers=reader).status_code == 200  # token now known
    seen = []
    for prefix, size in (("small-", 10), ("large-", 2000)):
        bulk_fleet(session, size, prefix)
        with count_statements() as statements:
            response = client.get("/v1/summary", headers=reader)
        assert response.get_json()["nodes"] in (10, 2010)
        seen.append(len(statements))
    assert seen == [1, 1], seen


def test_the_summary_needs_a_token_and_answers_problems(client: FlaskClient, db: None) -> None:
    assert_problem(client.get("/v1/summary"), 401)
    assert_problem(client.post("/v1/summary"), 405)


def _names(client: FlaskClient, headers: dict[str, str], query: str) -> list[str]:
    response = client.get(f"/v1/nodes?{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return [node["name"] for node in response.get_json()["items"]]


def test_nodes_by_condition(client: FlaskClient, session: Session, reader: dict[str, str]) -> None:
    _mixed(session)
    assert _names(client, reader, "condition=drift") == ["drift"]
    assert _names(client, reader, "condition=busy") == ["busy", "waiting"]
    assert _names(client, reader, "condition=ok") == ["synced", "unknown"]
    assert _names(client, reader, "condition=busy&power_state=on") == ["busy"]
    assert_problem(client.get("/v1/nodes?condition=sideways", headers=reader), 422)


def test_nodes_changed_since_a_time(
    client: FlaskClient, session: Session, reader: dict[str, str]
) -> None:
    _mixed(session)
    old = utcnow() - timedelta(hours=1)
    session.execute(  # nothing has changed for an hour
        update(Node).values(updated_at=old, last_checked_at=old, power_state_at=old)
    )
    session.execute(update(PowerRequest).values(updated_at=old))
    session.commit()
    since = (utcnow() - timedelta(minutes=1)).isoformat()
    query = f"changed_since={since.replace('+', '%2B')}"
    assert _names(client, reader, query) == []

    # the executor's observation writes power_state_at/last_checked_at, not updated_at
    session.execute(
        update(Node)
        .where(Node.name == "synced")
        .values(power_state=PowerState.OFF, power_state_at=utcnow(), updated_at=old)
    )
    # a request's progress (next step, attempt) is written on the request only
    session.execute(
        update(PowerRequest)
        .where(PowerRequest.node_id == select(Node.id).where(Node.name == "busy").scalar_subquery())
        .values(attempt=2, updated_at=utcnow())
    )
    session.commit()
    assert _names(client, reader, query) == ["busy", "synced"]
    assert _names(client, reader, query + "&power_state=off") == ["synced"]
    assert_problem(client.get("/v1/nodes?changed_since=yesterday", headers=reader), 422)
    assert_problem(client.get("/v1/nodes?changed_since=2026-01-01T00:00:00", headers=reader), 422)


def test_nodes_in_a_range_of_names(
    client: FlaskClient, session: Session, reader: dict[str, str]
) -> None:
    bulk_fleet(session, 12, "r-")
    assert _names(client, reader, "name_from=r-00004&name_to=r-00006") == [
        "r-00004", "r-00005", "r-00006",
    ]  # fmt: skip
    assert _names(client, reader, "name_from=r-00011") == ["r-00011", "r-00012"]
    assert_problem(client.get("/v1/nodes?name_from=", headers=reader), 422)


def test_changed_since_takes_iso_8601_only(client: FlaskClient, reader: dict[str, str]) -> None:
    for wrong in ("0.5", "1700000000", "2026-01-01", "2026-01-01T00:00:00"):
        assert_problem(client.get(f"/v1/nodes?changed_since={wrong}", headers=reader), 422)
    ok = client.get("/v1/nodes?changed_since=2026-01-01T00:00:00Z", headers=reader)
    assert ok.status_code == 200
