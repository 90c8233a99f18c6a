"""A node is registered, changed or imported only with an enabled driver
(``POWERQ_DRIVERS``); redfish is refused until it exists. The suite runs with
``POWERQ_DRIVERS=ipmi,sim`` (tests/conftest.py)."""

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
    """The default configuration: only the IPMI driver is enabled."""
    monkeypatch.delenv("POWERQ_DRIVERS")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_enabled_drivers_are_accepted(client: FlaskClient, admin: dict[str, str]) -> None:
    for name, driver in (("n-ipmi", "ipmi"), ("n-sim", "sim")):
        body = _body(name, driver, address=f"{name}.example")
        assert client.post("/v1/nodes", json=body, headers=admin).status_code == 201


def test_redfish_is_refused_while_it_does_not_exist(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    response = client.post("/v1/nodes", json=_body("n-rf", "redfish"), headers=admin)

    body = assert_problem(response, 422)
    assert "the Redfish driver is not available yet" in body["detail"]
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

    for driver, says in (("sim", "POWERQ_DRIVERS"), ("redfish", "not available yet")):
        change = {"driver": driver, "maintenance": True}
        body = assert_problem(client.patch("/v1/nodes/n1", json=change, headers=admin), 422)
        assert says in body["detail"]

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
    assert "Redfish driver is not available yet" in report["rows"][2]["detail"]
    assert _count(session) == 1


def _driver_schemas(client: FlaskClient) -> list[Any]:
    schemas = client.get("/v1/openapi.json").get_json()["components"]["schemas"]
    return [schemas[name]["properties"]["driver"]["enum"] for name in ("NodeIn", "NodePatch")]


def test_the_document_lists_the_enabled_drivers(client: FlaskClient) -> None:
    assert _driver_schemas(client) == [["ipmi", "sim"], ["ipmi", "sim"]]


def test_the_document_follows_the_setting(ipmi_only: None, db: None) -> None:
    app = create_app()
    assert _driver_schemas(app.test_client()) == [["ipmi"], ["ipmi"]]
