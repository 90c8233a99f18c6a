"""The pyghmi-based IPMI driver against the simulated fleet: actions, faults, sessions."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from powerq.bmc import close_all, driver_for
from powerq.bmc.base import BmcAuthError, BmcCommandRejected, BmcError, BmcUnreachable
from powerq.bmc.ipmi import SESSIONS, IpmiDriver, connect, disconnect
from powerq.bmc.ipmi_sessions import SessionCache
from powerq.bmc.sim import ManualClock
from powerq.states import Action, PowerState
from tests.bmc.helpers import SimBmc, wait_until, within

pytestmark = pytest.mark.ipmi


def _driver(bmc: SimBmc) -> IpmiDriver:
    driver = driver_for(bmc.target)
    assert isinstance(driver, IpmiDriver)
    return driver


def _state(bmc: SimBmc) -> PowerState:
    return within(_driver(bmc).get_power_state)


def _chassis_controls(bmc: SimBmc) -> list[dict[str, Any]]:
    return [dict(e) for e in bmc.control.log(bmc.name) if e["command"] == "chassis_control"]


@pytest.mark.parametrize(
    ("start", "action", "end"),
    [
        ("off", Action.ON, PowerState.ON),
        ("on", Action.OFF, PowerState.OFF),
        ("on", Action.SOFT_OFF, PowerState.OFF),
        ("on", Action.CYCLE, PowerState.ON),
        ("on", Action.RESET, PowerState.ON),
    ],
)
def test_every_action_is_sent_and_the_state_follows(
    bmc: SimBmc, start: str, action: Action, end: PowerState
) -> None:
    bmc.control.set_power(bmc.name, start)
    within(lambda: _driver(bmc).send_power_action(action))
    wait_until(lambda: _state(bmc) is end and not bmc.control.bmc(bmc.name)["transitioning"])
    [sent] = _chassis_controls(bmc)
    assert sent["completion_code"] == 0


def test_cycle_goes_through_off(bmc: SimBmc) -> None:
    bmc.control.set_behaviour(bmc.name, transition=2.0)
    bmc.control.set_power(bmc.name, "on")
    within(lambda: _driver(bmc).send_power_action(Action.CYCLE))
    wait_until(lambda: _state(bmc) is PowerState.OFF, what="the off half of the cycle")
    wait_until(lambda: _state(bmc) is PowerState.ON, what="the on half of the cycle")


def test_send_returns_before_the_hardware_changes(bmc: SimBmc) -> None:
    bmc.control.set_behaviour(bmc.name, transition=5.0)
    within(lambda: _driver(bmc).send_power_action(Action.ON))
    assert _state(bmc) is PowerState.OFF  # accepted, still transitioning


def test_query_is_not_a_power_action(bmc: SimBmc) -> None:
    with pytest.raises(ValueError, match="query"):
        _driver(bmc).send_power_action(Action.QUERY)


def test_cycle_of_a_machine_that_is_off_is_rejected(bmc: SimBmc) -> None:
    with pytest.raises(BmcCommandRejected) as caught:
        within(lambda: _driver(bmc).send_power_action(Action.CYCLE))
    message = str(caught.value)
    assert bmc.target.label in message and "0xd5" in message and "power cycle" in message
    assert (caught.value.address, caught.value.port) == (bmc.target.address, bmc.target.port)


@pytest.mark.parametrize(
    ("kind", "params", "error"),
    [
        ("down", {}, BmcUnreachable),
        ("lossy", {"fraction": 1.0}, BmcUnreachable),
        ("slow", {"delay": 30.0}, BmcUnreachable),
        ("wrong_credentials", {}, BmcAuthError),
        ("flaky", {"every": 1}, BmcUnreachable),  # 0xC0 node busy: transient
        ("flaky", {"every": 1, "code": 0xD4}, BmcCommandRejected),  # privilege: permanent
    ],
)
def test_each_fault_maps_to_its_exception_in_bounded_time(
    bmc: SimBmc, kind: str, params: dict[str, float], error: type[BmcError]
) -> None:
    bmc.control.set_fault(bmc.name, kind, **params)
    with pytest.raises(error) as caught:
        within(_driver(bmc).get_power_state)
    assert bmc.target.label in str(caught.value)
    assert caught.value.transient is (error is BmcUnreachable)


def test_slow_bmc_that_still_answers_works(bmc: SimBmc) -> None:
    bmc.control.set_fault(bmc.name, "slow", delay=0.2)
    assert _state(bmc) is PowerState.OFF


def test_stuck_bmc_accepts_but_never_changes(bmc: SimBmc) -> None:
    bmc.control.set_fault(bmc.name, "stuck")
    within(lambda: _driver(bmc).send_power_action(Action.ON))
    wait_until(lambda: len(_chassis_controls(bmc)) == 1)
    assert not bmc.control.bmc(bmc.name)["transitioning"]
    assert _state(bmc) is PowerState.OFF


def test_a_command_slower_than_pyghmis_retry_timer_is_not_retransmitted(bmc: SimBmc) -> None:
    """pyghmi would resend a command unanswered after 0.5-1 s; powerq sends it once
    and waits for the answer (see tests/bmc/test_wire_once.py for a BMC that
    runs every copy it receives)."""
    assert _state(bmc) is PowerState.OFF  # log in while the BMC is quick
    bmc.control.set_fault(bmc.name, "slow", delay=1.2)
    within(lambda: _driver(bmc).send_power_action(Action.ON))
    commands = [e["command"] for e in bmc.control.log(bmc.name)]
    assert commands.count("chassis_control") == 1
    assert "retransmission" not in commands
    assert bmc.control.bmc(bmc.name)["overlaps"] == 0


def test_session_is_reused_across_many_commands(bmc: SimBmc) -> None:
    bmc.control.set_behaviour(bmc.name, transition=0.0)
    driver = _driver(bmc)
    for i in range(40):
        within(driver.get_power_state)
        within(lambda i=i: driver.send_power_action(Action.ON if i % 2 else Action.OFF))
    status = bmc.control.bmc(bmc.name)
    assert (status["sessions_opened"], status["sessions_active"]) == (1, 1)
    assert SESSIONS.logins(bmc.target) == 1


def test_threads_share_one_session_per_bmc(bmc: SimBmc) -> None:
    def read(_: int) -> PowerState:
        return within(driver_for(bmc.target).get_power_state)

    with ThreadPoolExecutor(8) as pool:
        states = list(pool.map(read, range(64)))
    assert set(states) == {PowerState.OFF}
    assert bmc.control.bmc(bmc.name)["sessions_opened"] == 1


def test_failed_session_is_replaced_on_the_next_call(bmc: SimBmc) -> None:
    assert _state(bmc) is PowerState.OFF
    bmc.control.set_fault(bmc.name, "down")
    with pytest.raises(BmcUnreachable):
        within(_driver(bmc).get_power_state)  # mid-session: pyghmi retries, then gives up
    bmc.control.clear_fault(bmc.name)
    assert _state(bmc) is PowerState.OFF
    assert SESSIONS.logins(bmc.target) == 2
    assert bmc.control.bmc(bmc.name)["sessions_opened"] == 2


def test_idle_sessions_are_logged_out(make_bmc: Any) -> None:
    """Used again after the idle timeout: a fresh login; never used again: swept."""
    used, forgotten = make_bmc(), make_bmc()
    clock = ManualClock()
    cache = SessionCache(connect, disconnect, idle_timeout=10.0, clock=clock)
    try:
        for bmc in (used, forgotten):
            within(IpmiDriver(bmc.target, cache).get_power_state)
        clock.advance(11.0)
        within(IpmiDriver(used.target, cache).get_power_state)
        assert (cache.logins(used.target), cache.logins(forgotten.target)) == (2, 1)
        for bmc, active in ((used, 1), (forgotten, 0)):
            wait_until(lambda bmc=bmc, active=active: _closed_once(bmc, active))
    finally:
        cache.close_all()


def _closed_once(bmc: SimBmc, active: int) -> bool:
    """Close Session is sent unacknowledged: poll until the BMC has handled it."""
    commands = [e["command"] for e in bmc.control.log(bmc.name)]
    return (
        commands.count("close_session") == 1
        and bmc.control.bmc(bmc.name)["sessions_active"] == active
    )


def test_close_all_logs_out(make_bmc: Any) -> None:
    bmcs = [make_bmc() for _ in range(3)]
    for bmc in bmcs:
        assert _state(bmc) is PowerState.OFF
    within(close_all)
    for bmc in bmcs:
        wait_until(lambda bmc=bmc: bmc.control.bmc(bmc.name)["sessions_active"] == 0)


def test_driver_repr_hides_the_password(bmc: SimBmc) -> None:
    assert bmc.target.password not in repr(_driver(bmc))
    assert bmc.target.password not in repr(bmc.target)
