"""POST/GET /v1/batches through the Flask test client (roles, answers, problems)."""

from __future__ import annotations

import uuid

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from powerq.intents import find_node, request_power
from powerq.states import Action
from tests.api.helpers import assert_problem
from tests.factories import make_node


@pytest.fixture
def fleet(session: Session) -> list[str]:
    """Four nodes: n1, n2 tagged rack1; n3, n4 tagged rack2."""
    for i in range(1, 5):
        make_node(session, f"n{i}", tags=(f"rack{(i + 1) // 2}",))
    return ["n1", "n2", "n3", "n4"]


def test_operator_creates_a_batch_and_gets_its_results(
    client: FlaskClient, operator: dict[str, str], fleet: list[str], session: Session
) -> None:
    other = request_power(session, find_node(session, "n2"), Action.ON, actor="bob").request
    session.commit()

    response = client.post(
        "/v1/batches",
        json={"action": "off", "nodes": ["n1", "n2", "n3"], "max_in_flight": 1, "stagger_s": 2},
        headers=operator,
    )

    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert response.headers["Location"] == f"/v1/batches/{body['id']}"
    assert body["requested_by"] == "operator-token"
    assert body["outcomes"] == {"created": 2, "existing": 0, "refused": 1}
    assert body["counts"]["pending"] == 1 and body["counts"]["held"] == 1
    assert body["counts"]["refused"] == 1 and body["finished"] is False
    assert body["selector"] == {"nodes": ["n1", "n2", "n3"]}
    by_node = {n["node"]: n for n in body["nodes"]}
    assert by_node["n2"]["state"] == "refused"
    assert by_node["n2"]["outstanding"]["id"] == str(other.id)
    assert "outstanding 'on' request" in by_node["n2"]["error"]
    assert by_node["n1"]["request"]["not_before"] is not None
    assert by_node["n3"]["state"] == "held"


def test_readers_read_but_may_not_create(
    client: FlaskClient, headers: dict[str, dict[str, str]], fleet: list[str]
) -> None:
    body = {"action": "on", "selector": {"tags": ["rack2"]}}
    assert_problem(client.post("/v1/batches", json=body, headers=headers["reader"]), 403)
    created = client.post("/v1/batches", json=body, headers=headers["operator"]).get_json()

    one = client.get(f"/v1/batches/{created['id']}", headers=headers["reader"])
    counts_only = client.get(
        f"/v1/batches/{created['id']}?results=false", headers=headers["reader"]
    )

    assert one.status_code == 200
    assert sorted(n["node"] for n in one.get_json()["nodes"]) == ["n3", "n4"]
    assert counts_only.get_json()["nodes"] is None
    assert counts_only.get_json()["counts"]["pending"] == 2


def test_batches_are_listed_newest_first_in_pages(
    client: FlaskClient, operator: dict[str, str], reader: dict[str, str], fleet: list[str]
) -> None:
    ids = [
        client.post(
            "/v1/batches", json={"action": "query", "nodes": [name]}, headers=operator
        ).get_json()["id"]
        for name in fleet[:3]
    ]

    page = client.get("/v1/batches?limit=2&offset=1", headers=reader).get_json()

    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 1
    assert [item["id"] for item in page["items"]] == [ids[1], ids[0]]
    assert all(item["nodes"] is None for item in page["items"])


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"action": "off", "nodes": ["n1", "ghost"]}, 404, "no node named 'ghost'"),
        ({"action": "off", "selector": {"tags": ["rack9"]}}, 404, "no node matches"),
        ({"action": "off", "selector": {"name_glob": "x*"}}, 404, "no node matches"),
        ({"action": "off"}, 422, "either nodes or a selector"),
        ({"action": "off", "nodes": ["n1"], "selector": {"all": True}}, 422, "not both"),
        ({"action": "off", "selector": {}}, 422, "tags, a name_glob, or all"),
        ({"action": "off", "selector": {"all": False}}, 422, "tags, a name_glob, or all"),
        ({"action": "off", "nodes": []}, 422, "nodes"),
        ({"action": "off", "nodes": ["n1"], "max_in_flight": 0}, 422, "max_in_flight"),
        ({"action": "off", "nodes": ["n1"], "stagger_s": -1}, 422, "stagger_s"),
        ({"action": "off", "nodes": ["n1"], "surprise": 1}, 422, "surprise"),
        ({"action": "dance", "nodes": ["n1"]}, 422, "action"),
    ],
)
def test_invalid_batches_are_problems(
    client: FlaskClient,
    operator: dict[str, str],
    fleet: list[str],
    body: dict[str, object],
    status: int,
    detail: str,
) -> None:
    problem = assert_problem(client.post("/v1/batches", json=body, headers=operator), status)
    assert detail in problem["detail"]
    listed = client.get("/v1/batches", headers=operator).get_json()
    assert listed["total"] == 0


def test_an_unknown_batch_is_404(client: FlaskClient, reader: dict[str, str], db: None) -> None:
    assert_problem(client.get(f"/v1/batches/{uuid.uuid4()}", headers=reader), 404)
    assert_problem(client.get("/v1/batches/not-a-uuid", headers=reader), 404)


def test_a_batch_shows_its_deadline_and_refuses_pacing_that_cannot_fit(
    client: FlaskClient, operator: dict[str, str], reader: dict[str, str], fleet: list[str]
) -> None:
    body = {"action": "on", "nodes": fleet[:3], "stagger_s": 3600, "max_in_flight": 1}

    too_short = client.post(
        "/v1/batches", json={**body, "batch_deadline_s": 3600}, headers=operator
    )
    too_long = client.post(
        "/v1/batches", json={**body, "batch_deadline_s": 8 * 86400}, headers=operator
    )
    created = client.post("/v1/batches", json=body, headers=operator).get_json()
    listed = client.get("/v1/batches", headers=reader).get_json()

    assert "need 7200s to start the last one" in assert_problem(too_short, 422)["detail"]
    assert "batch_deadline_s" in assert_problem(too_long, 422)["detail"]
    assert created["deadline_at"] > created["created_at"] and created["cancelled_at"] is None
    assert listed["items"][0]["deadline_at"] == created["deadline_at"]
    assert all(node["state"] in ("pending", "held") for node in created["nodes"])


def test_operator_cancels_a_batch_and_its_nodes_are_free_again(
    client: FlaskClient, headers: dict[str, dict[str, str]], fleet: list[str]
) -> None:
    operator, reader = headers["operator"], headers["reader"]
    body = {"action": "off", "nodes": fleet, "stagger_s": 3600, "max_in_flight": 1}
    created = client.post("/v1/batches", json=body, headers=operator).get_json()
    blocked = client.post("/v1/nodes/n2/power", json={"action": "on"}, headers=operator)
    url = f"/v1/batches/{created['id']}"

    forbidden = client.delete(url, headers=reader)
    cancelled = client.delete(url, headers=operator)
    again = client.delete(url, headers=headers["admin"])
    shown = client.get(url, headers=reader).get_json()
    freed = client.post("/v1/nodes/n2/power", json={"action": "on"}, headers=operator)

    assert_problem(blocked, 409)
    assert_problem(forbidden, 403)
    assert cancelled.status_code == 200, cancelled.get_json()
    answer = cancelled.get_json()
    requests = {node["node"]: node["request"]["id"] for node in created["nodes"]}
    assert answer["counts"] == {"cancelled": 4, "running": 0}
    assert {e["node"]: e["request_id"] for e in answer["cancelled"]} == requests
    assert answer["running"] == [] and answer["cancelled_at"] is not None
    assert again.status_code == 200
    assert again.get_json()["counts"] == {"cancelled": 0, "running": 0}
    assert again.get_json()["cancelled_at"] == answer["cancelled_at"]
    assert shown["cancelled_at"] == answer["cancelled_at"] and shown["finished"] is True
    assert shown["counts"]["cancelled"] == 4
    assert freed.status_code == 202, freed.get_json()


def test_cancelling_an_unknown_batch_is_404(
    client: FlaskClient, operator: dict[str, str], db: None
) -> None:
    problem = assert_problem(client.delete(f"/v1/batches/{uuid.uuid4()}", headers=operator), 404)
    assert "no batch" in problem["detail"]


def test_results_come_a_page_at_a_time_in_batch_order(
    client: FlaskClient, operator: dict[str, str], reader: dict[str, str], fleet: list[str]
) -> None:
    order = ["n3", "n1", "n4", "n2"]
    created = client.post(
        "/v1/batches", json={"action": "on", "nodes": order}, headers=operator
    ).get_json()
    url = f"/v1/batches/{created['id']}"

    pages = [client.get(f"{url}?limit=3&offset={o}", headers=reader).get_json() for o in (0, 3)]
    past_the_end = client.get(f"{url}?limit=3&offset=4", headers=reader).get_json()
    too_big = client.get(f"{url}?limit=10001", headers=reader)

    assert [n["node"] for n in created["nodes"]] == order
    assert (created["limit"], created["offset"], created["total"]) == (1000, 0, 4)
    assert [[n["node"] for n in page["nodes"]] for page in pages] == [order[:3], order[3:]]
    assert [(p["limit"], p["offset"], p["total"]) for p in pages] == [(3, 0, 4), (3, 3, 4)]
    assert past_the_end["nodes"] == [] and past_the_end["counts"]["pending"] == 4
    assert_problem(too_big, 422)


def test_the_cli_client_follows_every_page(
    client: FlaskClient,
    operator: dict[str, str],
    fleet: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from powerq import client as client_module

    api = client_module.Client("http://powerq.invalid", operator["Authorization"].split()[1])
    calls: list[dict[str, object]] = []

    def call(method: str, path: str, **kwargs: object) -> object:
        calls.append(dict(kwargs.get("params") or {}))  # type: ignore[call-overload]
        flask_call = client.open(
            path, method=method, json=kwargs.get("json"), query_string=kwargs.get("params"),
            headers=operator,
        )  # fmt: skip
        return flask_call.get_json()

    monkeypatch.setattr(api, "call", call)
    monkeypatch.setattr(client_module, "BATCH_PAGE_SIZE", 3)
    created = api.create_batch({"action": "off", "nodes": fleet})

    whole = api.batch(str(created["id"]))
    counts_only = api.batch(str(created["id"]), results=False)

    assert [n["node"] for n in whole["nodes"]] == fleet
    assert calls[1:3] == [{"limit": 3, "offset": 0}, {"limit": 3, "offset": 3}]
    assert counts_only["nodes"] is None and counts_only["total"] == 4
