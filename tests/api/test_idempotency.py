"""Idempotency-Key: a retry by the same actor with the same key gets the first answer."""

from __future__ import annotations

import re
from typing import Any

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from powerq.models import IdempotentResponse, Node, PowerRequest
from powerq.states import RequestStatus
from tests.api.helpers import assert_problem, counts, live_server
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
    make_node(session, "node-2", address="127.0.0.2")  # one node per BMC endpoint
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


def _post_raw(client: FlaskClient, headers: dict[str, str], data: str, key: str) -> Any:
    return client.post(
        POWER, data=data.encode(), content_type="application/json", headers=_with_key(headers, key)
    )


def _stored(session: Session, key: str) -> IdempotentResponse:
    session.expire_all()
    rows = session.scalars(select(IdempotentResponse).where(IdempotentResponse.key == key)).all()
    assert len(rows) == 1
    return rows[0]


def test_the_same_key_and_body_replay_with_the_same_request(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    body = {"action": "on", "deadline_s": 60}
    first = client.post(POWER, json=body, headers=_with_key(operator, "fp-1"))
    retry = client.post(POWER, json=body, headers=_with_key(operator, "fp-1"))

    assert first.status_code == retry.status_code == 202
    assert retry.get_json()["request"]["id"] == first.get_json()["request"]["id"]
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert re.fullmatch(r"[0-9a-f]{64}", _stored(session, "fp-1").fingerprint or "")


@pytest.mark.parametrize(
    "retry_body",
    [
        '{"deadline_s":60,"action":"on"}',
        '  {\n  "deadline_s" : 60.0 ,\t"action":\n"on"}  ',
        '{"action":"\\u006fn","deadline_s":6e1}',
    ],
)
def test_key_order_whitespace_and_spelling_do_not_change_the_body(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session, retry_body: str
) -> None:
    first = _post_raw(client, operator, '{"action": "on", "deadline_s": 60}', "fp-2")
    retry = _post_raw(client, operator, retry_body, "fp-2")

    assert retry.status_code == 202, retry.get_data(as_text=True)
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.get_json() == first.get_json()
    assert counts(session)[0] == 1


@pytest.mark.parametrize(
    "retry_body",
    [{"action": "on", "deadline_s": 120}, {"action": "on"}, {"action": "off", "deadline_s": 60}],
)
def test_the_same_key_with_another_body_is_refused_and_writes_nothing(
    client: FlaskClient,
    operator: dict[str, str],
    node: Node,
    session: Session,
    retry_body: dict[str, Any],
) -> None:
    client.post(POWER, json={"action": "on", "deadline_s": 60}, headers=_with_key(operator, "abc"))
    before = counts(session), session.scalar(select(func.count()).select_from(IdempotentResponse))

    response = client.post(POWER, json=retry_body, headers=_with_key(operator, "abc"))

    detail = assert_problem(response, 422)["detail"]
    assert re.fullmatch(
        r"Idempotency-Key 'abc' was first used for POST /v1/nodes/node-1/power with a different "
        r"body at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ; use a new key for a different request",
        detail,
    ), detail
    assert "Idempotent-Replayed" not in response.headers
    after = counts(session), session.scalar(select(func.count()).select_from(IdempotentResponse))
    assert after == before


def test_the_same_key_on_another_path_names_the_first_call(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    make_node(session, "node-2", address="127.0.0.2")
    client.post(POWER, json={"action": "on"}, headers=_with_key(operator, "fp-3"))

    response = client.post(
        "/v1/nodes/node-2/power", json={"action": "on"}, headers=_with_key(operator, "fp-3")
    )

    detail = assert_problem(response, 422)["detail"]
    assert detail.startswith(
        "Idempotency-Key 'fp-3' was first used for POST /v1/nodes/node-1/power at "
    )
    assert counts(session)[0] == 1


def test_an_answer_stored_without_a_fingerprint_replays_as_before(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    first = client.post(POWER, json={"action": "on"}, headers=_with_key(operator, "old"))
    _stored(session, "old").fingerprint = None  # as stored before migration 0002
    session.commit()

    retry = client.post(
        POWER, json={"action": "on", "deadline_s": 90}, headers=_with_key(operator, "old")
    )
    other = client.post(POWER, json={"action": "off"}, headers=_with_key(operator, "old"))

    assert retry.status_code == 202
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.get_json() == first.get_json()
    assert "already used for another call" in assert_problem(other, 422)["detail"]
    assert counts(session)[0] == 1


# --- POST /v1/batches ----------------------------------------------------------------


def _batch_count(session: Session) -> int:
    from powerq.models import Batch

    session.expire_all()
    return int(session.scalar(select(func.count()).select_from(Batch)) or 0)


def test_a_retried_batch_submit_answers_the_same_batch_and_makes_no_second(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    make_node(session, "node-2", address="127.0.0.2")
    body = {"action": "off", "nodes": ["node-1", "node-2"], "name": "nightly"}

    first = client.post("/v1/batches", json=body, headers=_with_key(operator, "b-1"))
    # The same body, spelled otherwise (member order): the same call.
    retry = client.post(
        "/v1/batches", json=dict(reversed(body.items())), headers=_with_key(operator, "b-1")
    )

    assert first.status_code == retry.status_code == 201, retry.get_json()
    assert retry.get_json()["id"] == first.get_json()["id"]
    assert retry.get_json()["name"] == "nightly"
    assert [n["node"] for n in retry.get_json()["nodes"]] == ["node-1", "node-2"]
    assert retry.headers["Location"] == first.headers["Location"]
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert _batch_count(session) == 1
    assert counts(session)[0] == 2  # one request per node, once


def test_a_replayed_batch_is_shown_as_it_stands_now(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    body = {"action": "off", "nodes": ["node-1"]}
    first = client.post("/v1/batches", json=body, headers=_with_key(operator, "b-2")).get_json()
    client.delete(f"/v1/batches/{first['id']}", headers=operator)

    retry = client.post("/v1/batches", json=body, headers=_with_key(operator, "b-2")).get_json()

    assert first["counts"]["pending"] == 1 and first["cancelled_at"] is None
    assert retry["id"] == first["id"]
    assert retry["counts"]["cancelled"] == 1 and retry["cancelled_at"] is not None
    assert _batch_count(session) == 1


def test_the_same_batch_key_with_another_body_is_refused_and_writes_nothing(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    make_node(session, "node-2", address="127.0.0.2")
    client.post(
        "/v1/batches",
        json={"action": "off", "nodes": ["node-1"]},
        headers=_with_key(operator, "b-3"),
    )
    before = counts(session), _batch_count(session)

    response = client.post(
        "/v1/batches",
        json={"action": "off", "nodes": ["node-2"]},
        headers=_with_key(operator, "b-3"),
    )

    detail = assert_problem(response, 422)["detail"]
    assert detail.startswith(
        "Idempotency-Key 'b-3' was first used for POST /v1/batches with a different body at "
    ), detail
    assert (counts(session), _batch_count(session)) == before


def test_without_a_key_two_submits_make_two_batches_and_a_refusal_is_not_stored(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    body = {"action": "query", "nodes": ["node-1"]}
    client.post("/v1/batches", json=body, headers=operator)
    client.post("/v1/batches", json=body, headers=operator)
    unknown = {"action": "query", "nodes": ["ghost"]}
    refused = client.post("/v1/batches", json=unknown, headers=_with_key(operator, "b-4"))
    make_node(session, "ghost", address="127.0.0.3")

    later = client.post("/v1/batches", json=unknown, headers=_with_key(operator, "b-4"))

    assert_problem(refused, 404)
    assert later.status_code == 201 and "Idempotent-Replayed" not in later.headers
    assert _batch_count(session) == 3


def test_a_malformed_batch_key_is_refused(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    response = client.post(
        "/v1/batches",
        json={"action": "on", "nodes": ["node-1"]},
        headers=_with_key(operator, "a b"),
    )

    assert_problem(response, 422)
    assert _batch_count(session) == 0


def test_concurrent_batch_submits_with_one_key_make_one_batch(
    app: APIFlask, operator: dict[str, str], session: Session
) -> None:
    from tests.api.test_concurrency import _fire

    for i in range(1, 4):
        make_node(session, f"c{i}", address=f"127.0.1.{i}")
    headers = {**operator, "Idempotency-Key": "batch-storm-1"}
    body = {"action": "off", "nodes": ["c1", "c2", "c3"]}

    with live_server(app) as base:
        answers = _fire(f"{base}/v1/batches", headers, [body] * 10)

    assert {response.status_code for _, response in answers} == {201}
    assert len({response.json()["id"] for _, response in answers}) == 1
    assert sum("Idempotent-Replayed" in r.headers for _, r in answers) == 9
    assert _batch_count(session) == 1
    assert counts(session)[0] == 3
