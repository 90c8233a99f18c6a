"""PUT .../boot-device, POST .../validate and boot_device on POST .../power."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from powerq.models import Node, PowerRequest
from tests.api.helpers import assert_problem, counts
from tests.factories import make_node

BOOT = "/v1/nodes/node-1/boot-device"
VALIDATE = "/v1/nodes/node-1/validate"
POWER = "/v1/nodes/node-1/power"


@pytest.fixture
def node(session: Session) -> Node:
    return make_node(session, "node-1")


def test_boot_device_is_a_request_on_the_lane(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    response = client.put(BOOT, json={"device": "pxe", "persistent": True}, headers=operator)

    assert response.status_code == 202, response.get_json()
    request = response.get_json()["request"]
    assert request["action"] == "boot" and request["status"] == "pending"
    row = session.get(PowerRequest, request["id"])
    assert row is not None and (row.boot_device, row.boot_persistent) == ("pxe", True)
    again = client.put(BOOT, json={"device": "pxe", "persistent": True}, headers=operator)
    assert again.status_code == 200 and again.get_json()["request"]["id"] == request["id"]


def test_a_boot_device_never_overlaps_a_power_action(
    client: FlaskClient, operator: dict[str, str], node: Node
) -> None:
    assert client.post(POWER, json={"action": "off"}, headers=operator).status_code == 202
    refused = client.put(BOOT, json={"device": "disk"}, headers=operator)
    assert_problem(refused, 409)
    other = client.post(POWER, json={"action": "cycle", "boot_device": "pxe"}, headers=operator)
    assert_problem(other, 409)


def test_cycle_with_a_boot_device_is_one_request(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    response = client.post(POWER, json={"action": "cycle", "boot_device": "pxe"}, headers=operator)
    assert response.status_code == 202
    row = session.get(PowerRequest, response.get_json()["request"]["id"])
    assert row is not None and row.action.value == "cycle" and row.boot_device == "pxe"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"action": "off", "boot_device": "pxe"}, "boot_device goes with on, cycle, reset only"),
        ({"action": "cycle", "boot_persistent": True}, "boot_persistent needs boot_device"),
        ({"action": "cycle", "boot_device": "floppy"}, "boot_device"),
        ({"action": "validate"}, "action"),
        ({"action": "boot"}, "action"),
    ],
)
def test_invalid_combinations_are_refused_and_write_nothing(
    client: FlaskClient,
    operator: dict[str, str],
    node: Node,
    session: Session,
    body: dict[str, object],
    detail: str,
) -> None:
    before = counts(session)
    response = client.post(POWER, json=body, headers=operator)
    assert_problem(response, 422)
    assert detail in str(response.get_json())
    assert counts(session) == before


def test_an_unknown_boot_device_is_refused(
    client: FlaskClient, operator: dict[str, str], node: Node
) -> None:
    assert_problem(client.put(BOOT, json={"device": "floppy"}, headers=operator), 422)


def test_validate_is_a_request_that_changes_no_desired_state(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    response = client.post(VALIDATE, headers=operator)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["request"]["action"] == "validate"
    session.refresh(node)
    assert node.desired_power_state is None


def test_readers_may_not_validate_or_set_boot_devices(
    client: FlaskClient, reader: dict[str, str], node: Node
) -> None:
    assert_problem(client.post(VALIDATE, headers=reader), 403)
    assert_problem(client.put(BOOT, json={"device": "pxe"}, headers=reader), 403)


def test_a_node_registered_with_validate_gets_a_credential_check_queued(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    body = {
        "name": "fresh-1", "driver": "sim", "address": "127.0.0.77", "port": 6231,
        "username": "admin", "password": "s3cret-Pa55", "validate": True,
    }  # fmt: skip
    response = client.post("/v1/nodes", json=body, headers=admin)

    assert response.status_code == 201, response.get_json()
    check = response.get_json()["outstanding_request"]
    assert check["action"] == "validate" and check["status"] == "pending"
    row = session.get(PowerRequest, check["id"])
    assert row is not None and row.dispatched_at is not None


def test_validate_takes_no_body(
    client: FlaskClient, operator: dict[str, str], node: Node, session: Session
) -> None:
    before = counts(session)
    refused = client.post(VALIDATE, json={"deadline_s": 5}, headers=operator)
    problem = assert_problem(refused, 400)
    assert "takes no body" in problem["detail"]
    assert counts(session) == before


def test_an_identical_soft_off_must_also_agree_on_its_fallback(
    client: FlaskClient, operator: dict[str, str], node: Node
) -> None:
    plain = client.post(POWER, json={"action": "soft_off"}, headers=operator)
    assert plain.status_code == 202
    with_fallback = {"action": "soft_off", "soft_fallback": True}
    assert_problem(client.post(POWER, json=with_fallback, headers=operator), 409)
    assert client.post(POWER, json={"action": "soft_off"}, headers=operator).status_code == 200
