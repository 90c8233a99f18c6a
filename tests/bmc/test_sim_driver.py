"""The in-process simulated driver (for unit tests of pure logic) and the driver factory."""

from __future__ import annotations

import pytest

from powerq.bmc import close_all, driver_for
from powerq.bmc.base import (
    BmcAuthError,
    BmcCommandRejected,
    BmcError,
    BmcTarget,
    BmcUnreachable,
)
from powerq.bmc.ipmi import IpmiDriver
from powerq.bmc.sim import REGISTRY, ManualClock, SimPowerDriver
from powerq.states import Action, PowerState

pytestmark = pytest.mark.ipmi


def _sim(power: PowerState = PowerState.OFF) -> tuple[SimPowerDriver, ManualClock]:
    clock = ManualClock()
    return SimPowerDriver(power=power, transition=2.0, soft_delay=5.0, clock=clock), clock


@pytest.mark.parametrize(
    ("start", "action", "after", "end"),
    [
        (PowerState.OFF, Action.ON, 2.0, PowerState.ON),
        (PowerState.ON, Action.OFF, 2.0, PowerState.OFF),
        (PowerState.ON, Action.SOFT_OFF, 5.0, PowerState.OFF),
        (PowerState.ON, Action.CYCLE, 4.0, PowerState.ON),
        (PowerState.ON, Action.RESET, 0.0, PowerState.ON),
    ],
)
def test_actions_reach_their_state_on_the_injected_clock(
    start: PowerState, action: Action, after: float, end: PowerState
) -> None:
    driver, clock = _sim(power=start)
    driver.send_power_action(action)
    clock.advance(after)
    assert driver.get_power_state() is end
    assert not driver.transitioning


def test_nothing_changes_before_the_transition_ends() -> None:
    driver, clock = _sim()
    driver.send_power_action(Action.ON)
    clock.advance(1.9)
    assert driver.get_power_state() is PowerState.OFF and driver.transitioning


def test_cycle_passes_through_off() -> None:
    driver, clock = _sim(power=PowerState.ON)
    driver.send_power_action(Action.CYCLE)
    clock.advance(2.5)
    assert driver.get_power_state() is PowerState.OFF


@pytest.mark.parametrize("action", [Action.CYCLE, Action.RESET])
def test_cycle_and_reset_are_rejected_while_off(action: Action) -> None:
    driver, _ = _sim()
    with pytest.raises(BmcCommandRejected, match="0xd5"):
        driver.send_power_action(action)


def test_soft_off_may_never_happen() -> None:
    driver, clock = _sim(power=PowerState.ON)
    driver.soft_delay = None
    driver.send_power_action(Action.SOFT_OFF)
    clock.advance(10_000)
    assert driver.get_power_state() is PowerState.ON


def test_overlapping_actions_are_counted() -> None:
    driver, clock = _sim()
    driver.send_power_action(Action.ON)
    clock.advance(1.0)
    driver.send_power_action(Action.OFF)
    assert driver.overlaps == 1
    clock.advance(2.0)
    driver.send_power_action(Action.ON)
    assert driver.overlaps == 1
    assert [action for _, action in driver.sent] == [Action.ON, Action.OFF, Action.ON]


@pytest.mark.parametrize(
    ("kind", "params", "error"),
    [
        ("down", {}, BmcUnreachable),
        ("lossy", {"fraction": 1.0}, BmcUnreachable),
        ("wrong_credentials", {}, BmcAuthError),
        ("reject", {}, BmcCommandRejected),
    ],
)
def test_faults_raise_the_mapped_error(
    kind: str, params: dict[str, float], error: type[BmcError]
) -> None:
    driver, _ = _sim()
    driver.set_fault(kind, **params)
    with pytest.raises(error):
        driver.send_power_action(Action.ON)
    driver.clear_fault(kind)
    driver.send_power_action(Action.ON)


def test_flaky_fails_every_kth_call() -> None:
    driver, _ = _sim()
    driver.set_fault("flaky", every=2)
    outcomes = []
    for _ in range(4):
        try:
            driver.get_power_state()
            outcomes.append("ok")
        except BmcUnreachable:
            outcomes.append("fail")
    assert outcomes == ["ok", "fail", "ok", "fail"]


def test_stuck_accepts_without_changing() -> None:
    driver, clock = _sim()
    driver.set_fault("stuck")
    driver.send_power_action(Action.ON)
    clock.advance(100)
    assert driver.get_power_state() is PowerState.OFF and len(driver.sent) == 1


def test_query_is_not_sendable() -> None:
    driver, _ = _sim()
    with pytest.raises(ValueError):
        driver.send_power_action(Action.QUERY)


def test_unknown_fault_is_refused() -> None:
    driver, _ = _sim()
    with pytest.raises(ValueError):
        driver.set_fault("gremlins")


def test_driver_for_picks_the_implementation() -> None:
    sim_target = BmcTarget("sim", "rack1", 7, "admin", "secret")
    REGISTRY.clear()
    sim = driver_for(sim_target)
    assert isinstance(sim, SimPowerDriver) and driver_for(sim_target) is sim
    assert isinstance(driver_for(BmcTarget("ipmi", "127.0.0.1", 1, "a", "b")), IpmiDriver)
    redfish = driver_for(BmcTarget("redfish", "127.0.0.1", 443, "a", "b"))
    assert type(redfish).__name__ == "RedfishDriver"  # built by the Redfish work
    with pytest.raises(ValueError):
        driver_for(BmcTarget("telnet", "127.0.0.1", 23, "a", "b"))
    close_all()
    REGISTRY.clear()
