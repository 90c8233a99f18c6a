"""powerq's Redfish driver against the sim fleet's Redfish personality, over HTTPS.

Every effect is checked in the BMC's own command log and status (control API),
never only through the driver: one execution per command
(:func:`powerq.bmc.simfleet.executions.executed`) and no overlaps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from powerq.bmc.base import (
    BmcAuthError,
    BmcCommandRejected,
    BmcTarget,
    BmcUnreachable,
)
from powerq.bmc.redfish import RedfishDriver, RedfishSession, connect, disconnect
from powerq.bmc.redfish_sessions import SessionCache
from powerq.bmc.simfleet.controlclient import ControlClient, ControlClientError
from powerq.bmc.simfleet.executions import beyond_budget, executed
from powerq.bmc.simfleet.launcher import SimFleetProcess
from powerq.states import Action, BootDevice, PowerState
from tests.bmc.helpers import wait_until, within

TRANSITION = 0.3
SOFT_DELAY = 0.6
FLEET = 24

Sessions = SessionCache[RedfishSession]


class _Pool:
    def __init__(self, fleet: SimFleetProcess) -> None:
        self.rows = list(zip(fleet.manifest, fleet.targets(), strict=True))
        self.control = fleet.control
        self.lock = threading.Lock()

    def take(self) -> tuple[str, BmcTarget]:
        with self.lock:
            row, target = self.rows.pop(0)
        return row["name"], target


@pytest.fixture(scope="module")
def redfish_fleet() -> Iterator[SimFleetProcess]:
    with SimFleetProcess(
        FLEET, protocol="redfish", transition=TRANSITION, soft_delay=SOFT_DELAY
    ) as running:
        yield running


@pytest.fixture(scope="module")
def pool(redfish_fleet: SimFleetProcess) -> _Pool:
    return _Pool(redfish_fleet)


@pytest.fixture
def sessions() -> Iterator[Sessions]:
    """The production (HTTPS) session cache, private to the test."""
    cache: Sessions = SessionCache(connect, disconnect)
    yield cache
    cache.close_all()


@pytest.fixture
def bmc(pool: _Pool) -> tuple[str, BmcTarget]:
    return pool.take()


@pytest.fixture
def control(redfish_fleet: SimFleetProcess) -> ControlClient:
    return redfish_fleet.control


def _power(control: ControlClient, name: str) -> str:
    return control.bmc(name)["power"]


def _settled(control: ControlClient, name: str, power: str) -> bool:
    status = control.bmc(name)
    return status["power"] == power and not status["transitioning"]


def test_the_manifest_names_a_redfish_endpoint_per_bmc(redfish_fleet: SimFleetProcess) -> None:
    rows = redfish_fleet.manifest
    assert {r["driver"] for r in rows} == {"redfish"}
    endpoints = {(r["address"], r["port"], r["system"]) for r in rows}
    assert len(endpoints) == len(rows) == FLEET
    assert all(r["system"] == f"/redfish/v1/Systems/{r['name']}" for r in rows)
    assert all(r["ca_bundle"].startswith("-----BEGIN CERTIFICATE-----") for r in rows)


@pytest.mark.parametrize(
    ("action", "start", "end", "logged"),
    [
        (Action.ON, "off", "on", "power_up"),
        (Action.OFF, "on", "off", "power_down"),
        (Action.SOFT_OFF, "on", "off", "soft_shutdown"),
        (Action.RESET, "on", "on", "hard_reset"),
        (Action.CYCLE, "on", "on", "power_cycle"),
    ],
)
def test_every_action_runs_once_and_shows(
    bmc: tuple[str, BmcTarget],
    control: ControlClient,
    sessions: Sessions,
    action: Action,
    start: str,
    end: str,
    logged: str,
) -> None:
    name, target = bmc
    control.set_power(name, start)
    control.reset_logs()
    driver = RedfishDriver(target, sessions)

    within(lambda: driver.send_power_action(action))

    wait_until(lambda: _settled(control, name, end), 10, f"{name} {end}")
    assert within(driver.get_power_state) is PowerState(end)
    log = control.log(name)
    runs = [e for e in log if e["command"] == "chassis_control"]
    assert [(e["action"], e["completion_code"]) for e in runs] == [(logged, 0)]
    assert executed(log) == 1
    assert beyond_budget(log, [action.value]) == 0
    assert control.bmc(name)["overlaps"] == 0


def test_power_state_reads_powering_while_in_transition(
    bmc: tuple[str, BmcTarget], control: ControlClient, sessions: Sessions
) -> None:
    name, target = bmc
    control.set_behaviour(name, transition=2.0)
    driver = RedfishDriver(target, sessions)
    within(lambda: driver.send_power_action(Action.ON))

    assert within(driver.get_power_state) is PowerState.UNKNOWN  # PoweringOn
    wait_until(lambda: _settled(control, name, "on"), 10, f"{name} on")
    assert within(driver.get_power_state) is PowerState.ON


@pytest.fixture(scope="module")
def boot_bmc(pool: _Pool) -> tuple[str, BmcTarget]:
    """One BMC for every boot-device case (they change no power state)."""
    return pool.take()


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("device", list(BootDevice))
def test_boot_device_is_set_and_read_back(
    boot_bmc: tuple[str, BmcTarget],
    control: ControlClient,
    sessions: Sessions,
    device: BootDevice,
    persistent: bool,
) -> None:
    name, target = boot_bmc
    driver = RedfishDriver(target, sessions)

    within(lambda: driver.set_boot_device(device, persistent=persistent))

    assert within(driver.get_boot_device) is device
    assert control.bmc(name)["boot"] == {"device": device.value, "persistent": persistent}


def test_a_wrong_password_is_an_auth_error(bmc: tuple[str, BmcTarget], sessions: Sessions) -> None:
    _, target = bmc
    wrong = BmcTarget(**{**target.__dict__, "password": "not-the-password"})

    with pytest.raises(BmcAuthError, match="authentication refused"):
        within(RedfishDriver(wrong, sessions).get_power_state)


def test_the_wrong_credentials_fault_refuses_new_logins(
    bmc: tuple[str, BmcTarget], control: ControlClient, sessions: Sessions
) -> None:
    name, target = bmc
    control.set_fault(name, "wrong_credentials")

    with pytest.raises(BmcAuthError):
        within(RedfishDriver(target, sessions).get_power_state)
    control.clear_fault(name)
    assert within(RedfishDriver(target, sessions).get_power_state) is PowerState.OFF


def test_a_down_bmc_is_unreachable_and_comes_back(
    bmc: tuple[str, BmcTarget], control: ControlClient, sessions: Sessions
) -> None:
    name, target = bmc
    driver = RedfishDriver(target, sessions)
    assert within(driver.get_power_state) is PowerState.OFF
    control.set_fault(name, "down")
    assert control.bmc(name)["listening"] is False  # type: ignore[typeddict-item]

    with pytest.raises(BmcUnreachable, match="cannot connect"):
        within(driver.get_power_state)
    with pytest.raises(BmcUnreachable):
        within(lambda: driver.send_power_action(Action.ON))
    assert executed(control.log(name)) == 0

    control.clear_fault(name, "down")
    assert within(driver.get_power_state) is PowerState.OFF


def test_a_slow_bmc_is_answered_late_and_runs_once(
    bmc: tuple[str, BmcTarget], control: ControlClient, sessions: Sessions
) -> None:
    name, target = bmc
    driver = RedfishDriver(target, sessions)
    within(driver.get_power_state)  # logged in before the BMC turns slow
    control.set_fault(name, "slow", delay=1.0)

    started = time.monotonic()
    within(lambda: driver.send_power_action(Action.ON))

    assert time.monotonic() - started >= 2.0  # the GET of the system, then the POST
    control.clear_fault(name)
    wait_until(lambda: _settled(control, name, "on"), 10, f"{name} on")
    assert executed(control.log(name)) == 1


def test_a_bmc_slower_than_the_read_timeout_is_unreachable(
    bmc: tuple[str, BmcTarget], control: ControlClient, sessions: Sessions
) -> None:
    name, target = bmc
    driver = RedfishDriver(target, sessions)
    within(driver.get_power_state)
    control.set_fault(name, "slow", delay=8.0)  # longer than the driver's 6 s read timeout

    with pytest.raises(BmcUnreachable, match="no answer"):
        within(lambda: driver.send_power_action(Action.ON))

    control.clear_fault(name)
    assert executed(control.log(name)) == 0  # it timed out reading the system: no POST


def test_a_lossy_bmc_drops_requests_without_running_them(
    bmc: tuple[str, BmcTarget], control: ControlClient, sessions: Sessions
) -> None:
    name, target = bmc
    driver = RedfishDriver(target, sessions)
    within(driver.get_power_state)
    control.set_fault(name, "lossy", fraction=1.0)

    with pytest.raises(BmcUnreachable, match="no answer"):
        within(lambda: driver.send_power_action(Action.ON))

    assert control.bmc(name)["packets_dropped"] >= 1
    assert executed(control.log(name)) == 0
    control.clear_fault(name)
    assert within(driver.get_power_state) is PowerState.OFF


def test_a_stuck_bmc_accepts_and_never_changes(
    bmc: tuple[str, BmcTarget], control: ControlClient, sessions: Sessions
) -> None:
    name, target = bmc
    control.set_fault(name, "stuck")
    driver = RedfishDriver(target, sessions)

    within(lambda: driver.send_power_action(Action.ON))
    time.sleep(TRANSITION * 2)

    assert within(driver.get_power_state) is PowerState.OFF
    entries = [e for e in control.log(name) if e["command"] == "chassis_control"]
    assert [e["detail"] for e in entries] == ["stuck: accepted, ignored; HTTP 204"]


def test_a_reset_of_a_machine_that_is_off_is_refused(
    bmc: tuple[str, BmcTarget], control: ControlClient, sessions: Sessions
) -> None:
    name, target = bmc

    with pytest.raises(BmcCommandRejected, match="not allowed while the system is off"):
        within(lambda: RedfishDriver(target, sessions).send_power_action(Action.RESET))
    entries = [e for e in control.log(name) if e["command"] == "chassis_control"]
    assert [e["completion_code"] for e in entries] == [0xD5]


def test_two_commands_inside_one_transition_count_as_an_overlap(
    bmc: tuple[str, BmcTarget], control: ControlClient, sessions: Sessions
) -> None:
    name, target = bmc
    control.set_behaviour(name, transition=2.0)
    driver = RedfishDriver(target, sessions)

    within(lambda: driver.send_power_action(Action.ON))
    within(lambda: driver.send_power_action(Action.OFF))

    assert control.overlaps()["per_bmc"].get(name) == 1
    assert beyond_budget(control.log(name), ["on"]) == 1


def test_ipmi_only_faults_are_refused(bmc: tuple[str, BmcTarget], control: ControlClient) -> None:
    name, _ = bmc
    for kind in ("executes_retransmissions", "suite3_only_accepts_any"):
        with pytest.raises(ControlClientError, match="does not apply"):
            control.set_fault(name, kind)
