"""A node is registered, changed or imported only with an enabled driver
(``POWERQ_DRIVERS``, default ipmi,redfish; sim only when named). The suite runs
with ``POWERQ_DRIVERS=ipmi,sim`` (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from powerq.api import create_app
from powerq.config import get_settings
from powerq.models import Node
from tests.api.helpers import assert_problem


def _body(name: str, driver: str, address: str = "10.9.0.1") -> dict[str, Any]:
    return {
        "name": name,
        "driver": driver,
        "address": address,
        "username": "admin",
        "password": "pw",
    }


def _count(session: Session) -> int:
    session.expire_all()
    return int(session.scalar(select(func.count()).select_from(Node)) or 0)


@pytest.fixture
def ipmi_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only the IPMI driver is enabled."""
    monkeypatch.setenv("POWERQ_DRIVERS", "ipmi")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_enabled_drivers_are_accepted(client: FlaskClient, admin: dict[str, str]) -> None:
    for name, driver in (("n-ipmi", "ipmi"), ("n-sim", "sim")):
        body = _body(name, driver, address=f"{name}.example")
        assert client.post("/v1/nodes", json=body, headers=admin).status_code == 201


@pytest.fixture
def default_drivers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """POWERQ_DRIVERS unset: ipmi and redfish."""
    monkeypatch.delenv("POWERQ_DRIVERS")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_redfish_is_enabled_by_default_with_port_443(
    default_drivers: None, client: FlaskClient, admin: dict[str, str]
) -> None:
    response = client.post("/v1/nodes", json=_body("n-rf", "redfish"), headers=admin)

    assert response.status_code == 201, response.get_json()
    assert (response.get_json()["driver"], response.get_json()["port"]) == ("redfish", 443)
    sim = assert_problem(client.post("/v1/nodes", json=_body("n-sim", "sim"), headers=admin), 422)
    assert sim["enabled_drivers"] == ["ipmi", "redfish"]


def test_redfish_is_refused_unless_enabled(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    response = client.post("/v1/nodes", json=_body("n-rf", "redfish"), headers=admin)

    body = assert_problem(response, 422)
    assert body["detail"].startswith("driver 'redfish' is not enabled (enabled: ipmi, sim)")
    assert "POWERQ_DRIVERS=ipmi,sim,redfish" in body["detail"]
    assert body["enabled_drivers"] == ["ipmi", "sim"]
    assert body["type"] == "https://powerq.dev/problems/driver-not-enabled"
    assert _count(session) == 0


def test_sim_is_refused_unless_enabled(
    ipmi_only: None, client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    body = assert_problem(client.post("/v1/nodes", json=_body("n-sim", "sim"), headers=admin), 422)

    assert body["detail"].startswith("driver 'sim' is not enabled (enabled: ipmi)")
    assert "POWERQ_DRIVERS=ipmi,sim" in body["detail"]
    assert body["enabled_drivers"] == ["ipmi"]
    assert _count(session) == 0


def test_patch_to_a_driver_that_is_not_enabled_changes_nothing(
    ipmi_only: None, client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    assert client.post("/v1/nodes", json=_body("n1", "ipmi"), headers=admin).status_code == 201

    for driver in ("sim", "redfish"):
        change = {"driver": driver, "maintenance": True}
        body = assert_problem(client.patch("/v1/nodes/n1", json=change, headers=admin), 422)
        assert "POWERQ_DRIVERS" in body["detail"]

    node = client.get("/v1/nodes/n1", headers=admin).get_json()
    assert (node["driver"], node["maintenance"]) == ("ipmi", False)


def test_import_reports_rows_with_a_driver_that_is_not_enabled(
    ipmi_only: None, client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    manifest = [
        _body("n1", "ipmi", "10.9.0.1"),
        _body("n2", "sim", "10.9.0.2"),
        _body("n3", "redfish", "10.9.0.3"),
    ]

    report = client.post("/v1/nodes/import", json=manifest, headers=admin).get_json()

    assert [row["outcome"] for row in report["rows"]] == ["created", "invalid", "invalid"]
    assert "POWERQ_DRIVERS" in report["rows"][1]["detail"]
    assert "driver 'redfish' is not enabled" in report["rows"][2]["detail"]
    assert _count(session) == 1


def _driver_schemas(client: FlaskClient) -> list[Any]:
    schemas = client.get("/v1/openapi.json").get_json()["components"]["schemas"]
    return [schemas[name]["properties"]["driver"]["enum"] for name in ("NodeIn", "NodePatch")]


def test_the_document_lists_the_enabled_drivers(client: FlaskClient) -> None:
    assert _driver_schemas(client) == [["ipmi", "sim"], ["ipmi", "sim"]]


def test_the_document_follows_the_setting(ipmi_only: None, db: None) -> None:
    app = create_app()
    assert _driver_schemas(app.test_client()) == [["ipmi"], ["ipmi"]]
