"""Node options: each driver takes its own protocol's options, validated; secrets are
write-only; a Redfish system path is part of the BMC endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from powerq.bmc.simfleet import tlscert
from powerq.config import get_settings
from powerq.inventory import bmc_target
from powerq.models import Node
from tests.api.helpers import assert_problem


@pytest.fixture
def redfish_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("POWERQ_DRIVERS", "ipmi,redfish,sim")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def _pem() -> str:
    return tlscert.self_signed("127.0.0.1")[0]


def _rf(name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "driver": "redfish", "address": "bmc.example", "username": "u"}
    return {**body, "password": "pw", **extra}


def _ipmi(name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "driver": "ipmi", "address": "10.2.0.1", "username": "u"}
    return {**body, "password": "pw", **extra}


def _node(session: Session, name: str) -> Node:
    session.expire_all()
    node = session.query(Node).filter_by(name=name, deleted_at=None).one()
    return node


def test_redfish_options_are_stored_and_shown_without_the_bundle(
    redfish_on: None, client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    pem = _pem()
    body = _rf("rf1", system="/redfish/v1/Systems/1", verify_tls=True, ca_bundle=pem)

    response = client.post("/v1/nodes", json=body, headers=admin)

    out = response.get_json()
    assert response.status_code == 201, out
    assert (out["port"], out["system"], out["verify_tls"]) == (443, "/redfish/v1/Systems/1", True)
    assert out["ca_bundle_set"] is True and "BEGIN CERTIFICATE" not in response.text
    target = bmc_target(_node(session, "rf1"))
    assert (target.system, target.ca_bundle) == ("/redfish/v1/Systems/1", pem)


def test_ipmi_options_and_a_write_only_kg(
    redfish_on: None, client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    body = _ipmi("i1", ipmi_cipher_suite="17", ipmi_privilege="operator", ipmi_kg="0x0a0b")

    response = client.post("/v1/nodes", json=body, headers=admin)

    out = response.get_json()
    assert response.status_code == 201, out
    assert (out["port"], out["ipmi_cipher_suite"], out["ipmi_privilege"]) == (623, "17", "operator")
    assert out["ipmi_kg_set"] is True and "0x0a0b" not in response.text
    assert bmc_target(_node(session, "i1")).kg == "0x0a0b"

    cleared = client.patch("/v1/nodes/i1", json={"ipmi_kg": None}, headers=admin).get_json()
    assert cleared["ipmi_kg_set"] is False


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (_ipmi("x", verify_tls=False), "verify_tls does not apply to a ipmi node"),
        (_rf("x", ipmi_kg="abc"), "ipmi_kg does not apply to a redfish node"),
        (_rf("x", system="/redfish/v1/Chassis/1"), "system"),
        (_rf("x", ca_bundle="not a certificate"), "PEM certificates"),
        (_ipmi("x", ipmi_kg="k" * 21), "at most 20"),
        (_ipmi("x", ipmi_kg="0xabc"), "even number"),
        (_ipmi("x", ipmi_cipher_suite="1"), "ipmi_cipher_suite"),
    ],
)
def test_options_out_of_place_or_range_are_422(
    redfish_on: None,
    client: FlaskClient,
    admin: dict[str, str],
    body: dict[str, Any],
    says: str,
) -> None:
    problem = assert_problem(client.post("/v1/nodes", json=body, headers=admin), 422)
    assert says in str(problem), problem
    assert client.get("/v1/nodes/x", headers=admin).status_code == 404


def test_the_system_path_is_part_of_the_endpoint(
    redfish_on: None, client: FlaskClient, admin: dict[str, str]
) -> None:
    one = _rf("b1", system="/redfish/v1/Systems/1")
    assert client.post("/v1/nodes", json=one, headers=admin).status_code == 201
    two = _rf("b2", system="/redfish/v1/Systems/2")
    assert client.post("/v1/nodes", json=two, headers=admin).status_code == 201

    again = _rf("b3", address="BMC.example", system="/redfish/v1/Systems/2")
    problem = assert_problem(client.post("/v1/nodes", json=again, headers=admin), 409)
    assert problem["detail"] == (
        "BMC BMC.example:443 system /redfish/v1/Systems/2 is already registered as node 'b2'"
    )
    moved = client.patch("/v1/nodes/b1", json={"system": "/redfish/v1/Systems/2"}, headers=admin)
    assert assert_problem(moved, 409)["existing_node"] == "b2"


def test_a_driver_change_resets_the_other_protocols_options(
    redfish_on: None, client: FlaskClient, admin: dict[str, str]
) -> None:
    body = _rf("c1", system="/redfish/v1/Systems/1", verify_tls=False)
    assert client.post("/v1/nodes", json=body, headers=admin).status_code == 201

    change = {"driver": "ipmi", "port": 623, "ipmi_privilege": "operator"}
    out = client.patch("/v1/nodes/c1", json=change, headers=admin).get_json()

    assert (out["driver"], out["system"], out["verify_tls"]) == ("ipmi", None, True)
    assert out["ipmi_privilege"] == "operator"


def test_import_rows_take_options(
    redfish_on: None, client: FlaskClient, admin: dict[str, str]
) -> None:
    rows = [_rf("m1", system="/redfish/v1/Systems/7"), _ipmi("m2", verify_tls=False)]

    report = client.post("/v1/nodes/import", json=rows, headers=admin).get_json()

    assert [row["outcome"] for row in report["rows"]] == ["created", "invalid"]
    assert "verify_tls does not apply" in report["rows"][1]["detail"]
    assert client.get("/v1/nodes/m1", headers=admin).get_json()["system"] == "/redfish/v1/Systems/7"
