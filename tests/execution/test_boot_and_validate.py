"""Boot device and validate requests, step by step in-process against the sim driver."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from powerq.bmc.sim import SimPowerDriver
from powerq.models import Node
from powerq.states import Action, BootDevice, Evidence, PowerState, RequestStatus
from tests.execution.inprocess import drive, executed, request_for


def test_a_boot_request_sets_the_device_and_reads_it_back(
    session: Session, machine: tuple[Node, SimPowerDriver]
) -> None:
    node, sim = machine
    done = drive(session, request_for(session, node, Action.BOOT, boot_device=BootDevice.PXE))
    assert done.status is RequestStatus.SUCCEEDED
    assert done.evidence == Evidence.BOOT_DEVICE
    assert sim.boot == (BootDevice.PXE, False)
    assert executed(sim) == []  # no power command


def test_boot_then_cycle_in_one_request_sets_the_device_before_the_off(
    session: Session, machine: tuple[Node, SimPowerDriver]
) -> None:
    node, sim = machine
    request_id = request_for(session, node, Action.CYCLE, boot_device=BootDevice.PXE)
    done = drive(session, request_id)
    assert done.status is RequestStatus.SUCCEEDED and done.evidence == Evidence.OFF_THEN_ON
    assert done.boot_set_at is not None
    [(set_at, device)] = sim.boot_sets
    first_power_command_at = sim.sent[0][0]
    assert device is BootDevice.PXE and set_at <= first_power_command_at
    assert executed(sim) == [Action.OFF, Action.ON]


def test_a_bmc_that_reports_another_device_fails_the_request(
    session: Session, machine: tuple[Node, SimPowerDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, sim = machine
    monkeypatch.setattr(sim, "get_boot_device", lambda: BootDevice.DISK)
    done = drive(session, request_for(session, node, Action.CYCLE, boot_device=BootDevice.PXE))
    assert done.status is RequestStatus.FAILED
    assert "reports boot device disk after pxe was set" in (done.error or "")
    assert executed(sim) == []  # the cycle never started on the wrong device


def test_validate_reads_the_state_and_changes_nothing(
    session: Session, machine: tuple[Node, SimPowerDriver]
) -> None:
    node, sim = machine
    done = drive(session, request_for(session, node, Action.VALIDATE))
    assert done.status is RequestStatus.SUCCEEDED and done.evidence == Evidence.READ
    assert done.observed_after is PowerState.ON
    session.refresh(node)
    assert node.desired_power_state is None
    assert executed(sim) == []


def test_validate_says_what_is_wrong_in_one_line(
    session: Session, machine: tuple[Node, SimPowerDriver]
) -> None:
    node, sim = machine
    sim.set_fault("wrong_credentials")
    done = drive(session, request_for(session, node, Action.VALIDATE))
    assert done.status is RequestStatus.FAILED
    assert "credentials refused" in (done.error or "") and "\n" not in (done.error or "")
