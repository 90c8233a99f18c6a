"""Nodes: create, list with filters and pages, read, change, delete, import."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from powerq.models import Node, PowerEvent, PowerRequest
from powerq.secrets import decrypt_password
from powerq.states import DesiredPowerState, PowerState, RequestStatus
from tests.api.helpers import assert_problem
from tests.factories import make_node

NEW = {
    "name": "rack1-n01",
    "driver": "ipmi",
    "address": "10.0.0.11",
    "port": 623,
    "username": "admin",
    "password": "hunter2-for-real",
    "tags": ["rack1", "gpu", "rack1"],
}


def _node(session: Session, name: str) -> Node:
    session.expire_all()
    return session.scalars(select(Node).where(Node.name == name)).one()


def test_create_node(client: FlaskClient, admin: dict[str, str], session: Session) -> None:
    response = client.post("/v1/nodes", json=NEW, headers=admin)

    assert response.status_code == 201
    assert response.headers["Location"] == "/v1/nodes/rack1-n01"
    body = response.get_json()
    assert "password" not in body
    assert body["tags"] == ["gpu", "rack1"]
    assert (body["driver"], body["address"], body["port"]) == ("ipmi", "10.0.0.11", 623)
    assert body["power_state"] == "unknown"
    assert body["desired_power_state"] is None
    assert decrypt_password(_node(session, "rack1-n01").bmc_password_encrypted) == NEW["password"]
    event = session.scalars(select(PowerEvent)).one()
    assert (event.kind, event.actor) == ("registered", "admin-token")


def test_create_defaults_port_and_tags(client: FlaskClient, admin: dict[str, str]) -> None:
    body = {k: v for k, v in NEW.items() if k not in ("port", "tags")}
    created = client.post("/v1/nodes", json=body, headers=admin).get_json()
    assert (created["port"], created["tags"]) == (623, [])


def test_create_duplicate_is_409(client: FlaskClient, admin: dict[str, str]) -> None:
    client.post("/v1/nodes", json=NEW, headers=admin)
    assert_problem(client.post("/v1/nodes", json=NEW, headers=admin), 409)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "bad name"}, "name"),
        ({"name": "import"}, "name"),
        ({"name": "x" * 64}, "name"),
        ({"name": "node\n"}, "name"),
        ({"driver": "telnet"}, "driver"),
        ({"port": 0}, "port"),
        ({"port": "623"}, "port"),
        ({"address": ""}, "address"),
        ({"address": "10.0.0.1; rm -rf"}, "address"),
        ({"username": "ad\x00min"}, "username"),
        ({"password": "p" * 129}, "password"),
        ({"password": None}, "password"),
        ({"tags": ["ok", "not ok"]}, "tags.1"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_create_rejects_bad_fields_and_writes_nothing(
    client: FlaskClient, admin: dict[str, str], session: Session, change: dict[str, Any], field: str
) -> None:
    body = assert_problem(client.post("/v1/nodes", json={**NEW, **change}, headers=admin), 422)

    assert field in {error["field"] for error in body["errors"]}
    assert session.scalar(select(func.count()).select_from(Node)) == 0


def test_missing_fields_are_each_named(client: FlaskClient, admin: dict[str, str]) -> None:
    body = assert_problem(client.post("/v1/nodes", json={}, headers=admin), 422)
    assert {e["field"] for e in body["errors"]} == {
        "name",
        "driver",
        "address",
        "username",
        "password",
    }


@pytest.fixture
def fleet(session: Session) -> list[Node]:
    """Five nodes in assorted states."""
    nodes = [
        make_node(session, "a-1", tags=("rack1", "gpu")),
        make_node(session, "a-2", tags=("rack1",)),
        make_node(session, "b-1", tags=("rack2", "gpu")),
        make_node(session, "b-2", tags=("rack2",)),
        make_node(session, "c-1"),
    ]
    nodes[0].power_state, nodes[0].desired_power_state = PowerState.ON, DesiredPowerState.ON
    nodes[1].power_state, nodes[1].desired_power_state = PowerState.OFF, DesiredPowerState.ON
    nodes[2].power_state, nodes[2].desired_power_state = PowerState.OFF, DesiredPowerState.OFF
    nodes[3].maintenance = True
    nodes[4].power_fault, nodes[4].power_fault_reason = True, "3 failures"
    session.commit()
    return nodes


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("", ["a-1", "a-2", "b-1", "b-2", "c-1"]),
        ("power_state=off", ["a-2", "b-1"]),
        ("power_state=unknown", ["b-2", "c-1"]),
        ("desired_power_state=on", ["a-1", "a-2"]),
        ("desired_power_state=none", ["b-2", "c-1"]),
        ("maintenance=true", ["b-2"]),
        ("maintenance=false", ["a-1", "a-2", "b-1", "c-1"]),
        ("power_fault=true", ["c-1"]),
        ("tag=gpu", ["a-1", "b-1"]),
        ("tag=rack1,gpu", ["a-1"]),
        ("name_prefix=b-", ["b-1", "b-2"]),
        ("tag=rack2&power_state=off", ["b-1"]),
        ("name_prefix=zzz", []),
    ],
)
def test_list_filters(
    client: FlaskClient, reader: dict[str, str], fleet: list[Node], query: str, names: list[str]
) -> None:
    page = client.get(f"/v1/nodes?{query}", headers=reader).get_json()
    assert [item["name"] for item in page["items"]] == names
    assert page["total"] == len(names)


def test_list_pages(client: FlaskClient, reader: dict[str, str], fleet: list[Node]) -> None:
    first = client.get("/v1/nodes?limit=2", headers=reader).get_json()
    last = client.get("/v1/nodes?limit=2&offset=4", headers=reader).get_json()

    assert [item["name"] for item in first["items"]] == ["a-1", "a-2"]
    assert [item["name"] for item in last["items"]] == ["c-1"]
    assert (first["total"], last["total"], last["offset"]) == (5, 5, 4)


def test_list_shows_the_outstanding_request(
    client: FlaskClient, operator: dict[str, str], reader: dict[str, str], fleet: list[Node]
) -> None:
    client.post("/v1/nodes/b-2/power", json={"action": "off"}, headers=operator)

    items = {i["name"]: i for i in client.get("/v1/nodes", headers=reader).get_json()["items"]}

    assert items["b-2"]["outstanding_request"]["action"] == "off"
    assert items["a-1"]["outstanding_request"] is None


@pytest.mark.parametrize(
    "query",
    [
        "power_state=dim",
        "maintenance=perhaps",
        "tag=bad tag",
        "name_prefix=%00",
        "limit=0",
        "sort=name",
    ],
)
def test_list_rejects_bad_filters(
    client: FlaskClient, reader: dict[str, str], fleet: list[Node], query: str
) -> None:
    assert_problem(client.get(f"/v1/nodes?{query}", headers=reader), 422)


def test_get_node(client: FlaskClient, reader: dict[str, str], fleet: list[Node]) -> None:
    body = client.get("/v1/nodes/c-1", headers=reader).get_json()
    assert (body["power_fault"], body["power_fault_reason"]) == (True, "3 failures")
    assert_problem(client.get("/v1/nodes/nope", headers=reader), 404)


def test_patch_changes_fields_and_records_which(
    client: FlaskClient, admin: dict[str, str], fleet: list[Node], session: Session
) -> None:
    response = client.patch(
        "/v1/nodes/a-1",
        json={"maintenance": True, "tags": ["x"], "port": 6230, "password": "n3w-Secret"},
        headers=admin,
    )

    assert response.status_code == 200
    body = response.get_json()
    assert (body["maintenance"], body["tags"], body["port"]) == (True, ["x"], 6230)
    node = _node(session, "a-1")
    assert decrypt_password(node.bmc_password_encrypted) == "n3w-Secret"
    event = session.scalars(select(PowerEvent).where(PowerEvent.kind == "updated")).one()
    assert event.actor == "admin-token"
    assert set(event.detail["fields"]) == {"maintenance", "tags", "port", "password"}
    assert "n3w-Secret" not in str(event.message) + str(event.detail)


def test_maintenance_records_why_who_and_since_and_lifting_clears_it(
    client: FlaskClient, admin: dict[str, str], fleet: list[Node], session: Session
) -> None:
    on = client.patch(
        "/v1/nodes/a-1",
        json={"maintenance": True, "maintenance_reason": "PSU swap, ticket 4711"},
        headers=admin,
    ).get_json()
    reworded = client.patch(
        "/v1/nodes/a-1", json={"maintenance_reason": "PSU swap, ticket 4712"}, headers=admin
    ).get_json()
    off = client.patch("/v1/nodes/a-1", json={"maintenance": False}, headers=admin).get_json()

    assert (on["maintenance"], on["maintenance_reason"], on["maintenance_by"]) == (
        True,
        "PSU swap, ticket 4711",
        "admin-token",
    )
    assert on["maintenance_since"].endswith("Z")
    assert reworded["maintenance_reason"] == "PSU swap, ticket 4712"
    assert reworded["maintenance_since"] == on["maintenance_since"]
    assert (off["maintenance"], off["maintenance_reason"], off["maintenance_by"]) == (
        False,
        None,
        None,
    )
    assert off["maintenance_since"] is None
    fields = [
        e.detail["fields"]
        for e in session.scalars(
            select(PowerEvent).where(PowerEvent.kind == "updated").order_by(PowerEvent.id)
        )
    ]
    assert fields == [["maintenance"], ["maintenance_reason"], ["maintenance"]]


def test_patch_clears_the_desired_state(
    client: FlaskClient, admin: dict[str, str], fleet: list[Node]
) -> None:
    body = client.patch(
        "/v1/nodes/a-1", json={"desired_power_state": None}, headers=admin
    ).get_json()
    assert body["desired_power_state"] is None
    assert body["desired_power_state_at"].endswith("Z")


@pytest.mark.parametrize(
    "change",
    [
        {"desired_power_state": "on"},
        {"port": None},
        {"port": 70000},
        {"maintenance": "yes"},
        {"maintenance_reason": "not in maintenance"},
        {"maintenance": False, "maintenance_reason": "lifting"},
        {"maintenance": True, "maintenance_reason": ""},
        {"maintenance": True, "maintenance_reason": "line\nbreak"},
        {"name": "renamed"},
        {"tags": "rack1"},
    ],
)
def test_patch_rejects_bad_changes_and_changes_nothing(
    client: FlaskClient,
    admin: dict[str, str],
    fleet: list[Node],
    session: Session,
    change: dict[str, Any],
) -> None:
    port = fleet[0].bmc_port
    assert_problem(client.patch("/v1/nodes/a-1", json=change, headers=admin), 422)

    node = _node(session, "a-1")
    assert (node.desired_power_state, node.bmc_port, node.maintenance, node.tags) == (
        DesiredPowerState.ON,
        port,
        False,
        ["gpu", "rack1"],
    )


def test_patch_with_a_null_body_is_refused(
    client: FlaskClient, admin: dict[str, str], fleet: list[Node]
) -> None:
    response = client.patch(
        "/v1/nodes/a-1", data="null", content_type="application/json", headers=admin
    )
    assert "null" in assert_problem(response, 400)["detail"]


def test_delete_node(
    client: FlaskClient, admin: dict[str, str], reader: dict[str, str], fleet: list[Node]
) -> None:
    assert client.delete("/v1/nodes/c-1", headers=admin).status_code == 204
    assert_problem(client.get("/v1/nodes/c-1", headers=reader), 404)
    assert_problem(client.delete("/v1/nodes/c-1", headers=admin), 404)


@pytest.mark.parametrize("status", [RequestStatus.PENDING, RequestStatus.RUNNING])
def test_delete_is_refused_while_a_request_is_outstanding(
    client: FlaskClient,
    admin: dict[str, str],
    operator: dict[str, str],
    fleet: list[Node],
    session: Session,
    status: RequestStatus,
) -> None:
    request_id = client.post(
        "/v1/nodes/a-2/power", json={"action": "on"}, headers=operator
    ).get_json()["request"]["id"]
    row = session.get(PowerRequest, uuid.UUID(request_id))
    assert row is not None
    row.status = status
    session.commit()

    body = assert_problem(client.delete("/v1/nodes/a-2", headers=admin), 409)

    assert body["outstanding"]["id"] == request_id
    assert _node(session, "a-2").name == "a-2"


def test_delete_after_the_request_finished(
    client: FlaskClient,
    admin: dict[str, str],
    operator: dict[str, str],
    fleet: list[Node],
    session: Session,
) -> None:
    request_id = client.post(
        "/v1/nodes/a-2/power", json={"action": "on"}, headers=operator
    ).get_json()["request"]["id"]
    client.delete(f"/v1/requests/{request_id}", headers=operator)

    assert client.delete("/v1/nodes/a-2", headers=admin).status_code == 204
    assert session.scalar(select(func.count()).select_from(PowerRequest)) == 1
    assert client.get(f"/v1/requests/{request_id}", headers=operator).status_code == 200


MANIFEST = [
    {
        "name": "sim-1",
        "driver": "ipmi",
        "address": "127.0.0.1",
        "port": 16001,
        "username": "admin",
        "password": "password",
    },
    {
        "name": "sim-2",
        "driver": "ipmi",
        "address": "127.0.0.1",
        "port": 16002,
        "username": "admin",
        "password": "password",
        "tags": ["sim"],
        "fault": "none",
    },
    {
        "name": "bad name",
        "driver": "ipmi",
        "address": "127.0.0.1",
        "port": 16003,
        "username": "admin",
        "password": "password",
    },
    {
        "name": "sim-4",
        "driver": "ipmi",
        "address": "127.0.0.1",
        "port": "16004",
        "username": "admin",
        "password": "password",
    },
]


def test_import_a_json_manifest_reports_each_row(
    client: FlaskClient, admin: dict[str, str], reader: dict[str, str], session: Session
) -> None:
    make_node(session, "sim-1", port=623)

    report = client.post("/v1/nodes/import", json=MANIFEST, headers=admin).get_json()

    assert [(r["row"], r["name"], r["outcome"]) for r in report["rows"]] == [
        (1, "sim-1", "skipped"),
        (2, "sim-2", "created"),
        (3, "bad name", "invalid"),
        (4, "sim-4", "invalid"),
    ]
    assert "name" in report["rows"][2]["detail"] and "port" in report["rows"][3]["detail"]
    assert report["summary"] == {"created": 1, "updated": 0, "skipped": 1, "invalid": 2}
    assert _node(session, "sim-1").bmc_port == 623
    assert client.get("/v1/nodes/sim-2", headers=reader).get_json()["tags"] == ["sim"]


def test_import_update_mode_and_nodes_envelope(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    make_node(session, "sim-1", port=623)

    report = client.post(
        "/v1/nodes/import?mode=update", json={"nodes": MANIFEST[:1]}, headers=admin
    ).get_json()

    assert report["rows"][0]["outcome"] == "updated"
    assert "port" in report["rows"][0]["detail"]
    assert _node(session, "sim-1").bmc_port == 16001


def test_import_csv(client: FlaskClient, admin: dict[str, str], session: Session) -> None:
    csv_text = (
        "name,driver,address,port,username,password,tags\r\n"
        "csv-1,ipmi,10.1.0.1,623,admin,pw1,rack9;gpu\r\n"
        'csv-2,sim,10.1.0.2,,root,"p,w2",\r\n'
        "csv-3,ipmi,10.1.0.3,notaport,admin,pw3,\r\n"
        "csv-4,redfish,10.1.0.4,443,admin,pw4,\r\n"
    )

    response = client.post(
        "/v1/nodes/import", data=csv_text.encode(), content_type="text/csv", headers=admin
    )

    report = response.get_json()
    assert [r["outcome"] for r in report["rows"]] == ["created", "created", "invalid", "invalid"]
    assert "driver 'redfish' is not enabled" in report["rows"][3]["detail"]
    node = _node(session, "csv-2")
    assert (node.bmc_port, node.tags, decrypt_password(node.bmc_password_encrypted)) == (
        623,
        [],
        "p,w2",
    )
    assert _node(session, "csv-1").tags == ["gpu", "rack9"]


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ('{"name": "x"}', "application/json"),
        ("[1, 2]", "application/json"),
        ("name,driver\nx,ipmi\n", "text/csv"),
        ("not json", "application/json"),
    ],
)
def test_import_rejects_a_malformed_manifest_and_writes_nothing(
    client: FlaskClient, admin: dict[str, str], session: Session, data: str, content_type: str
) -> None:
    response = client.post("/v1/nodes/import", data=data, content_type=content_type, headers=admin)
    assert_problem(response, 400 if data == "not json" else 422)
    assert session.scalar(select(func.count()).select_from(Node)) == 0


def test_import_path_is_not_a_node(client: FlaskClient, admin: dict[str, str]) -> None:
    response = client.get("/v1/nodes/import", headers=admin)
    body = assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]
    assert "GET" in body["detail"]
