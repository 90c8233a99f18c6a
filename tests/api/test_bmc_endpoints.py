"""One machine, one node: no way the API offers registers a second live node on a
BMC endpoint (address in any case, port) that a live node already holds."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from apiflask import APIFlask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from powerq.models import Node, PowerEvent
from tests.api.helpers import PROBLEM_MIME, assert_problem, live_server

TAKEN = "BMC 10.0.0.5:623 is already registered as node 'rack1-n3'"


def _body(name: str, address: str = "10.0.0.5", port: int = 623, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "driver": "ipmi",
        "address": address,
        "port": port,
        "username": "admin",
        "password": "pw",
        **extra,
    }


def _nodes(session: Session) -> dict[str, tuple[str, int]]:
    """Every live node's endpoint, by name (committed rows)."""
    session.expire_all()
    rows = session.scalars(select(Node).where(Node.deleted_at.is_(None)))
    return {node.name: (node.bmc_address, node.bmc_port) for node in rows}


def _events(session: Session) -> int:
    session.expire_all()
    return int(session.scalar(select(func.count()).select_from(PowerEvent)) or 0)


def _register(client: FlaskClient, admin: dict[str, str], name: str, **fields: Any) -> None:
    response = client.post("/v1/nodes", json=_body(name, **fields), headers=admin)
    assert response.status_code == 201, response.get_json()


def _assert_taken(body: dict[str, Any], detail: str, holder: str) -> None:
    assert body["detail"] == detail
    assert body["existing_node"] == holder
    assert body["type"] == "https://powerq.dev/problems/bmc-endpoint-taken"


def test_create_on_a_registered_bmc_is_409_naming_the_node(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    _register(client, admin, "rack1-n3")
    events = _events(session)

    body = assert_problem(client.post("/v1/nodes", json=_body("rack1-n4"), headers=admin), 409)

    _assert_taken(body, TAKEN, "rack1-n3")
    assert _nodes(session) == {"rack1-n3": ("10.0.0.5", 623)}
    assert _events(session) == events


def test_the_address_is_compared_in_any_case(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    _register(client, admin, "bmc-a", address="BMC-A.example.NET", port=6230)

    response = client.post(
        "/v1/nodes", json=_body("bmc-b", address="bmc-a.EXAMPLE.net", port=6230), headers=admin
    )

    body = assert_problem(response, 409)
    assert "bmc-a.EXAMPLE.net:6230 is already registered as node 'bmc-a'" in body["detail"]
    assert list(_nodes(session)) == ["bmc-a"]


def test_the_same_address_on_another_port_is_another_bmc(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    _register(client, admin, "rack1-n3")
    _register(client, admin, "rack1-n4", port=624)
    _register(client, admin, "rack1-n5", address="10.0.0.6")
    assert len(_nodes(session)) == 3


def test_a_name_clash_is_reported_as_a_name_clash(
    client: FlaskClient, admin: dict[str, str]
) -> None:
    _register(client, admin, "rack1-n3")
    body = assert_problem(client.post("/v1/nodes", json=_body("rack1-n3"), headers=admin), 409)
    assert body["detail"] == "a node named 'rack1-n3' already exists"


def test_patch_onto_a_registered_bmc_is_409_and_changes_nothing(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    _register(client, admin, "rack1-n3")
    _register(client, admin, "rack1-n4", address="10.0.0.9", port=624)
    events = _events(session)

    moves = [
        {"address": "10.0.0.5", "port": 623, "maintenance": True, "tags": ["x"]},
        {"address": "10.0.0.5"},  # keeps port 624: another BMC, see below
        {"port": 623, "address": "10.0.0.5"},
    ]
    assert client.patch("/v1/nodes/rack1-n4", json=moves[1], headers=admin).status_code == 200
    for move in (moves[0], moves[2], {"port": 623}):
        response = client.patch("/v1/nodes/rack1-n4", json=move, headers=admin)
        _assert_taken(assert_problem(response, 409), TAKEN, "rack1-n3")

    assert _nodes(session) == {"rack1-n3": ("10.0.0.5", 623), "rack1-n4": ("10.0.0.5", 624)}
    node = client.get("/v1/nodes/rack1-n4", headers=admin).get_json()
    assert (node["maintenance"], node["tags"]) == (False, [])
    assert _events(session) == events + 1  # the one allowed change


def test_patch_may_change_the_case_of_its_own_address(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    _register(client, admin, "rack1-n3", address="bmc-3.example")
    response = client.patch("/v1/nodes/rack1-n3", json={"address": "BMC-3.example"}, headers=admin)
    assert response.status_code == 200, response.get_json()
    assert _nodes(session) == {"rack1-n3": ("BMC-3.example", 623)}


def test_import_reports_a_row_on_a_registered_bmc_and_applies_the_others(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    _register(client, admin, "rack1-n3")
    manifest = [
        _body("rack1-n4", address="10.0.0.5"),  # rack1-n3's BMC
        _body("rack1-n5", address="10.0.0.7"),
        _body("rack1-n6", address="10.0.0.7"),  # rack1-n5's, from this very import
        _body("rack1-n7", address="10.0.0.8"),
    ]

    report = client.post("/v1/nodes/import", json=manifest, headers=admin).get_json()

    assert [(row["name"], row["outcome"]) for row in report["rows"]] == [
        ("rack1-n4", "invalid"),
        ("rack1-n5", "created"),
        ("rack1-n6", "invalid"),
        ("rack1-n7", "created"),
    ]
    assert report["rows"][0]["detail"] == TAKEN
    assert report["rows"][2]["detail"] == (
        "BMC 10.0.0.7:623 is already registered as node 'rack1-n5'"
    )
    assert sorted(_nodes(session)) == ["rack1-n3", "rack1-n5", "rack1-n7"]


def test_import_update_cannot_move_a_node_onto_a_registered_bmc(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    _register(client, admin, "rack1-n3")
    _register(client, admin, "rack1-n4", address="10.0.0.9")

    csv_text = (
        "name,driver,address,port,username,password\r\n"
        "rack1-n4,ipmi,10.0.0.5,623,admin,pw\r\n"
        "rack1-n8,ipmi,10.0.0.5,623,admin,pw\r\n"
    )
    report = client.post(
        "/v1/nodes/import?mode=update", data=csv_text, content_type="text/csv", headers=admin
    ).get_json()

    assert [row["outcome"] for row in report["rows"]] == ["invalid", "invalid"]
    assert all(row["detail"] == TAKEN for row in report["rows"])
    assert _nodes(session) == {"rack1-n3": ("10.0.0.5", 623), "rack1-n4": ("10.0.0.9", 623)}


def test_concurrent_creates_on_one_bmc_register_exactly_one(
    app: APIFlask, admin: dict[str, str], session: Session
) -> None:
    clients = 12
    bodies = [
        _body(f"racer-{i}", address="bmc-5.example" if i % 2 else "BMC-5.Example", port=623)
        for i in range(clients)
    ]
    barrier = threading.Barrier(clients)

    def post(body: dict[str, Any]) -> requests.Response:
        with requests.Session() as http:
            barrier.wait(timeout=30)
            return http.post(f"{base}/v1/nodes", json=body, headers=admin, timeout=60)

    with live_server(app) as base, ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(post, bodies))

    statuses = Counter(response.status_code for response in answers)
    assert statuses == Counter({201: 1, 409: clients - 1}), statuses
    winner = next(r for r in answers if r.status_code == 201).json()["name"]
    for response in answers:
        if response.status_code == 409:
            assert response.headers["Content-Type"] == PROBLEM_MIME
            assert response.json()["existing_node"] == winner
            assert response.json()["detail"].endswith(f"registered as node {winner!r}")
    assert list(_nodes(session)) == [winner]
