"""The Redfish driver against sushy-tools' emulator, checked by an independent client.

Every effect is read back with a plain ``requests`` GET of the system (never
through sushy); what reached the BMC is counted in the emulator's own log.
"""

from __future__ import annotations

import time

import pytest

from powerq.bmc.base import (
    BmcAuthError,
    BmcCommandRejected,
    BmcProtocolError,
    BmcTarget,
    BmcUnreachable,
)
from powerq.bmc.redfish import RedfishDriver, RedfishSession
from powerq.bmc.redfish_sessions import SessionCache
from powerq.states import Action, BootDevice, PowerState
from tests.redfish.conftest import target_of
from tests.redfish.emulator import Emulator, free_port

Sessions = SessionCache[RedfishSession]
RESET = "ComputerSystem.Reset"


def _driver(bmc: Emulator, sessions: Sessions, **options: object) -> RedfishDriver:
    return RedfishDriver(target_of(bmc, **options), sessions)


def test_the_single_system_is_picked_and_read(bmc: Emulator, sessions: Sessions) -> None:
    driver = _driver(bmc, sessions)
    path = bmc.system_path("node-a")

    state = driver.get_power_state()

    with sessions.lease(driver.target) as lease:
        assert lease.session.system_path == path
    expected = {"On": PowerState.ON, "Off": PowerState.OFF}[bmc.power_state(path)]
    assert state is expected


@pytest.mark.parametrize(
    ("action", "reset_type", "before", "after"),
    [
        (Action.ON, "On", "Off", "On"),
        (Action.OFF, "ForceOff", "On", "Off"),
        (Action.SOFT_OFF, "GracefulShutdown", "On", "Off"),
        (Action.RESET, "ForceRestart", "On", "On"),
    ],
)
def test_every_power_action_reaches_the_bmc_once_and_shows(
    bmc: Emulator,
    sessions: Sessions,
    action: Action,
    reset_type: str,
    before: str,
    after: str,
) -> None:
    driver = _driver(bmc, sessions)
    path = bmc.system_path("node-a")
    _bring(bmc, driver, path, before)
    posts = bmc.posts(RESET)

    driver.send_power_action(action)

    if action is Action.RESET:  # the emulator goes off at once, then on again
        assert bmc.wait_power(path, "Off", timeout_s=2) == "Off"
    assert bmc.wait_power(path, after) == after
    assert bmc.posts(RESET) == posts + 1
    assert driver.get_power_state() is PowerState(after.lower())


def test_a_cycle_is_refused_when_power_cycle_is_not_offered(
    bmc: Emulator, sessions: Sessions
) -> None:
    driver = _driver(bmc, sessions)
    posts = bmc.posts(RESET)

    with pytest.raises(BmcCommandRejected) as refused:
        driver.send_power_action(Action.CYCLE)

    assert "not PowerCycle" in str(refused.value) and "ForceRestart" in str(refused.value)
    assert bmc.posts(RESET) == posts


def test_query_is_not_a_command(bmc: Emulator, sessions: Sessions) -> None:
    with pytest.raises(ValueError):
        _driver(bmc, sessions).send_power_action(Action.QUERY)


@pytest.mark.parametrize(
    ("device", "name"),
    [(BootDevice.PXE, "Pxe"), (BootDevice.DISK, "Hdd"), (BootDevice.CDROM, "Cd")],
)
def test_boot_device_is_set_and_read_back(
    bmc: Emulator, sessions: Sessions, device: BootDevice, name: str
) -> None:
    driver = _driver(bmc, sessions)
    path = bmc.system_path("node-a")

    driver.set_boot_device(device, persistent=True)

    boot = bmc.get(path)["Boot"]
    assert boot["BootSourceOverrideTarget"] == name  # type: ignore[index]
    assert driver.get_boot_device() is device


def test_a_boot_device_the_system_does_not_offer_is_refused(
    bmc: Emulator, sessions: Sessions
) -> None:
    with pytest.raises(BmcCommandRejected, match="offers boot targets"):
        _driver(bmc, sessions).set_boot_device(BootDevice.BIOS, persistent=False)


def test_a_wrong_password_is_an_auth_error_quickly(bmc: Emulator, sessions: Sessions) -> None:
    driver = _driver(bmc, sessions, password="not-the-password")
    started = time.monotonic()

    with pytest.raises(BmcAuthError) as refused:
        driver.get_power_state()

    assert time.monotonic() - started < 5
    assert "authentication refused" in str(refused.value)
    assert "not-the-password" not in str(refused.value)


def test_a_closed_port_is_unreachable_and_nothing_is_sent(sessions: Sessions) -> None:
    port = free_port()  # nothing listens there
    target = BmcTarget("redfish", "127.0.0.1", port, "admin", "secret")
    driver = RedfishDriver(target, sessions)
    started = time.monotonic()

    with pytest.raises(BmcUnreachable) as reading:
        driver.get_power_state()
    with pytest.raises(BmcUnreachable) as sending:
        driver.send_power_action(Action.ON)

    assert time.monotonic() - started < 10
    for caught in (reading, sending):
        assert type(caught.value) is BmcUnreachable  # not "maybe sent"
        assert "cannot connect" in str(caught.value)


def test_a_system_path_the_bmc_does_not_have_is_a_permanent_error(
    bmc: Emulator, sessions: Sessions
) -> None:
    driver = _driver(bmc, sessions, system="/redfish/v1/Systems/no-such-node")

    with pytest.raises(BmcProtocolError) as caught:
        driver.get_power_state()

    assert "no such system '/redfish/v1/Systems/no-such-node'" in str(caught.value)
    assert not caught.value.transient


def test_the_session_is_reused_and_closed(bmc: Emulator, sessions: Sessions) -> None:
    driver = _driver(bmc, sessions)
    for _ in range(3):
        driver.get_power_state()
    assert sessions.logins(driver.target) == 1

    driver.close()
    driver.get_power_state()

    assert sessions.logins(driver.target) == 2


def _bring(bmc: Emulator, driver: RedfishDriver, path: str, state: str) -> None:
    """Put the system in ``state`` first (through the driver, checked by a plain GET)."""
    if bmc.wait_power(path, state, timeout_s=0) != state:
        driver.send_power_action(Action.ON if state == "On" else Action.OFF)
    assert bmc.wait_power(path, state) == state
