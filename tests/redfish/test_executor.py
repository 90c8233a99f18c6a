"""End to end through the executor: a Redfish node registered through the inventory,
requests created with request_power and driven by run_request in-process (the
lease expired between runs, as for a new worker), over TLS with the node's CA
bundle. Every outcome is checked by a plain GET of the system's PowerState.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy.orm import Session

from powerq.bmc import close_all
from powerq.config import get_settings
from powerq.intents import request_power
from powerq.inventory import NodeSpec, create_node
from powerq.models import Node, PowerRequest
from powerq.node_options import NodeOptions
from powerq.states import Action, BootDevice, DriverKind, Evidence, PowerState, RequestStatus
from powerq.tasks import steps
from powerq.tasks.monitor import refresh_node
from tests.execution.inprocess import make_due
from tests.redfish.emulator import PASSWORD, USERNAME, Emulator

DRIVE_TIMEOUT_S = 40.0


@pytest.fixture
def redfish_enabled(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("POWERQ_DRIVERS", "ipmi,redfish,sim")
    get_settings.cache_clear()
    yield
    close_all()
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def node(session: Session, redfish_enabled: None, tls_bmc: Emulator) -> Node:
    spec = NodeSpec(
        "rf-1",
        DriverKind.REDFISH,
        "127.0.0.1",
        tls_bmc.port,
        USERNAME,
        PASSWORD,
        options=NodeOptions(ca_bundle=tls_bmc.ca_pem),
    )
    created = create_node(session, spec, actor="test")
    session.commit()
    return created


def _set_power(bmc: Emulator, state: str) -> str:
    """Put the system in ``state`` with a plain POST (not through powerq)."""
    path = bmc.system_path("node-a")
    if bmc.power_state(path) != state:
        requests.post(
            f"{bmc.url}{path}/Actions/ComputerSystem.Reset",
            json={"ResetType": "On" if state == "On" else "ForceOff"},
            auth=(USERNAME, PASSWORD),
            verify=str(bmc.directory / "bmc.crt"),
            timeout=5,
        ).raise_for_status()
    assert bmc.wait_power(path, state) == state
    return path


def _drive(session: Session, node: Node, action: Action, **options: object) -> PowerRequest:
    intent = request_power(session, node, action, actor="test", **options)  # type: ignore[arg-type]
    request_id: uuid.UUID = intent.request.id
    session.commit()
    deadline = time.monotonic() + DRIVE_TIMEOUT_S
    while time.monotonic() < deadline:
        steps.run_request(request_id)
        session.expire_all()
        request = session.get(PowerRequest, request_id)
        assert request is not None
        if request.status in (RequestStatus.SUCCEEDED, RequestStatus.FAILED):
            return request
        time.sleep(0.2)
        make_due(session, request_id)
    raise AssertionError(f"{action} did not finish in {DRIVE_TIMEOUT_S} s")


@pytest.mark.parametrize(
    ("action", "start", "end", "evidence"),
    [
        (Action.ON, "Off", "On", Evidence.POWER_STATE),
        (Action.OFF, "On", "Off", Evidence.POWER_STATE),
        (Action.CYCLE, "On", "On", Evidence.OFF_THEN_ON),
        (Action.RESET, "On", "On", Evidence.ACKNOWLEDGED),
        (Action.QUERY, "On", "On", Evidence.READ),
    ],
)
def test_each_action_through_the_executor(
    session: Session,
    node: Node,
    tls_bmc: Emulator,
    action: Action,
    start: str,
    end: str,
    evidence: Evidence,
) -> None:
    path = _set_power(tls_bmc, start)
    posts = tls_bmc.posts("ComputerSystem.Reset")

    done = _drive(session, node, action)

    assert done.status is RequestStatus.SUCCEEDED, done.error
    assert done.evidence == evidence
    assert tls_bmc.wait_power(path, end) == end
    sent = {Action.ON: 1, Action.OFF: 1, Action.CYCLE: 2, Action.RESET: 1, Action.QUERY: 0}
    assert tls_bmc.posts("ComputerSystem.Reset") == posts + sent[action]


def test_the_monitor_refreshes_a_redfish_node(
    session: Session, node: Node, tls_bmc: Emulator
) -> None:
    for state, observed in (("Off", PowerState.OFF), ("On", PowerState.ON)):
        _set_power(tls_bmc, state)
        assert refresh_node(node.id) is observed
        session.refresh(node)
        assert node.power_state is observed


def test_validate_and_boot_device_through_the_executor(
    session: Session, node: Node, tls_bmc: Emulator
) -> None:
    path = _set_power(tls_bmc, "On")
    validated = _drive(session, node, Action.VALIDATE)
    assert validated.status is RequestStatus.SUCCEEDED and validated.evidence == Evidence.READ

    booted = _drive(session, node, Action.BOOT, boot_device=BootDevice.PXE)

    assert booted.status is RequestStatus.SUCCEEDED, booted.error
    assert booted.evidence == Evidence.BOOT_DEVICE
    system = requests.get(
        f"{tls_bmc.url}{path}",
        auth=(USERNAME, PASSWORD),
        verify=str(tls_bmc.directory / "bmc.crt"),
        timeout=5,
    ).json()
    assert system["Boot"]["BootSourceOverrideTarget"] == "Pxe"
