"""Idempotency-Key: a retry by the same actor with the same key gets the first answer."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from powerq.models import IdempotentResponse, Node, PowerRequest
from powerq.states import RequestStatus
from tests.api.helpers import assert_problem, counts
from tests.factories import make_node

POWER = "/v1/nodes/node-1/power"


@pytest.fixture
def node(session: Session) -> Node:
    return make_node(session, "node-1")


def _with_key(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


def test_a_retry_replays_the_first_answer(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    first = client.post(POWER, json={"action": "on"}, headers=_with_key(operator, "k-1"))
    retry = client.post(POWER, json={"action": "on"}, headers=_with_key(operator, "k-1"))

    assert first.status_code == retry.status_code == 202
    assert retry.get_json() == first.get_json()
    assert retry.get_json()["dispatched"] is True
    assert retry.headers["Location"] == first.headers["Location"]
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert session.scalar(select(func.count()).select_from(PowerRequest)) == 1
    row = session.get(PowerRequest, first.get_json()["request"]["id"])
    assert row is not None and row.idempotency_key == "k-1"


def test_the_replay_holds_after_the_request_moved_on(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    first = client.post(POWER, json={"action": "on"}, headers=_with_key(operator, "k-2"))
    row = session.get(PowerRequest, first.get_json()["request"]["id"])
    assert row is not None
    row.status = RequestStatus.SUCCEEDED
    session.commit()

    retry = client.post(POWER, json={"action": "on"}, headers=_with_key(operator, "k-2"))

    assert retry.status_code == 202
    assert retry.get_json()["request"]["id"] == str(row.id)
    assert retry.get_json()["request"]["status"] == "pending"  # the first answer, as it was
    assert session.scalar(select(func.count()).select_from(PowerRequest)) == 1


def test_a_200_answer_is_replayed_too(
    client: FlaskClient, operator: dict[str, str], admin: dict[str, str], node: Node
) -> None:
    client.post(POWER, json={"action": "off"}, headers=admin)
    first = client.post(POWER, json={"action": "off"}, headers=_with_key(operator, "k-3"))
    retry = client.post(POWER, json={"action": "off"}, headers=_with_key(operator, "k-3"))

    assert first.status_code == retry.status_code == 200
    assert retry.get_json() == first.get_json()


def test_keys_belong_to_their_actor(
    client: FlaskClient,
    operator: dict[str, str],
    admin: dict[str, str],
    node: Node,
    session: Session,
) -> None:
    mine = client.post(POWER, json={"action": "on"}, headers=_with_key(operator, "shared"))
    theirs = client.post(POWER, json={"action": "on"}, headers=_with_key(admin, "shared"))

    assert mine.status_code == 202
    assert theirs.status_code == 200  # evaluated afresh: the identical request is outstanding
    assert "Idempotent-Replayed" not in theirs.headers
    assert session.scalar(select(func.count()).select_from(IdempotentResponse)) == 2


def test_a_refusal_is_not_stored(
    client: FlaskClient,
    operator: dict[str, str],
    admin: dict[str, str],
    node: Node,
    session: Session,
) -> None:
    blocking = client.post(POWER, json={"action": "on"}, headers=admin).get_json()
    assert_problem(
        client.post(POWER, json={"action": "off"}, headers=_with_key(operator, "k-4")), 409
    )
    row = session.get(PowerRequest, blocking["request"]["id"])
    assert row is not None
    row.status = RequestStatus.SUCCEEDED
    session.commit()

    retry = client.post(POWER, json={"action": "off"}, headers=_with_key(operator, "k-4"))

    assert retry.status_code == 202


@pytest.mark.parametrize(("path", "action"), [("/v1/nodes/node-2/power", "on"), (POWER, "off")])
def test_a_key_reused_for_another_call_is_refused(
    client: FlaskClient,
    operator: dict[str, str],
    node: Node,
    session: Session,
    path: str,
    action: str,
) -> None:
    make_node(session, "node-2")
    client.post(POWER, json={"action": "on"}, headers=_with_key(operator, "k-5"))
    before = counts(session)

    body = assert_problem(
        client.post(path, json={"action": action}, headers=_with_key(operator, "k-5")), 422
    )

    assert "Idempotency-Key" in body["detail"]
    assert counts(session) == before


@pytest.mark.parametrize("key", ["", "with space", "x" * 256, "caf\u00e9"])
def test_a_malformed_key_is_refused(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session, key: str
) -> None:
    headers = {**operator, "Idempotency-Key": key}
    try:
        response = client.post(POWER, json={"action": "on"}, headers=headers)
    except (UnicodeEncodeError, ValueError):
        pytest.skip("the client cannot send this header")
    assert_problem(response, 422)
    assert counts(session) == (0, 1)
