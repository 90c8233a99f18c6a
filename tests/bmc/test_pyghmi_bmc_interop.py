"""powerq's IPMI driver against pyghmi's BMC server (the engine inside VirtualBMC).

A real IPMI BMC implementation powerq did not write, in its own process
(``tests/bmc/pyghmi_bmc.py``). It supports cipher suite 3 only and answers
a suite-17 proposal with suite 3 and no error. What counts is what the
server *executed* (its own report), not what the driver says it sent.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from powerq.bmc.base import BmcAuthError, BmcProtocolError, BmcTarget
from powerq.bmc.ipmi import IpmiDriver, connect, disconnect, negotiated_suite
from powerq.bmc.ipmi_sessions import SessionCache
from powerq.bmc.pyghmi_patches import COMMAND_ANSWER_WAIT_S, READ_ANSWER_WAIT_S
from powerq.states import Action, PowerState
from tests.bmc.helpers import HANG_GUARD, ipmitool, requires_ipmitool, within
from tests.bmc.pyghmi_bmc import PyghmiBmcProcess

pytestmark = pytest.mark.ipmi

SLOW_ANSWER_S = 0.8  # longer than pyghmi's 0.5-1 s retry timer, shorter than our waits
StartBmc = Callable[..., PyghmiBmcProcess]


@pytest.fixture
def start_bmc() -> Iterator[StartBmc]:
    """Start pyghmi BMC servers (one per process); all are stopped after the test."""
    started: list[PyghmiBmcProcess] = []

    def start(**options: Any) -> PyghmiBmcProcess:
        server = PyghmiBmcProcess(**options).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def cache() -> Iterator[SessionCache]:
    """A session cache of the test's own (the real connect, no shared state)."""
    sessions = SessionCache(connect, disconnect, suite_of=negotiated_suite)
    yield sessions
    sessions.close_all()


def _driver(target: BmcTarget, cache: SessionCache) -> IpmiDriver:
    return IpmiDriver(target, cache)


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def test_auto_negotiates_suite_3_and_powers_off_and_on(
    start_bmc: StartBmc, cache: SessionCache
) -> None:
    bmc = start_bmc(state="on")
    driver = _driver(bmc.target(), cache)  # cipher_suite "auto": no manual option

    assert within(driver.get_power_state) is PowerState.ON
    within(lambda: driver.send_power_action(Action.OFF))
    assert within(driver.get_power_state) is PowerState.OFF
    within(lambda: driver.send_power_action(Action.ON))
    assert within(driver.get_power_state) is PowerState.ON

    bmc.settle()
    assert _names(bmc.executions()) == ["power_off", "power_on"]
    assert cache.known_suite(bmc.target()) == "3"
    assert len(bmc.events("open_session")) == 2  # 17 answered with 3, then 3


def test_auto_remembers_the_suite_that_worked(start_bmc: StartBmc, cache: SessionCache) -> None:
    bmc = start_bmc()
    driver = _driver(bmc.target(), cache)
    within(driver.get_power_state)
    driver.close()
    bmc.reset_events()

    assert within(driver.get_power_state) is PowerState.OFF

    assert cache.logins(bmc.target()) == 2
    assert len(bmc.events("open_session")) == 1, "the second login paid the fallback again"


def test_suite_3_works(start_bmc: StartBmc, cache: SessionCache) -> None:
    bmc = start_bmc(state="on")
    driver = _driver(bmc.target(cipher_suite="3"), cache)
    within(lambda: driver.send_power_action(Action.OFF))
    assert within(driver.get_power_state) is PowerState.OFF
    assert len(bmc.events("open_session")) == 1


def test_suite_17_only_is_refused_and_says_so(start_bmc: StartBmc, cache: SessionCache) -> None:
    bmc = start_bmc()
    driver = _driver(bmc.target(cipher_suite="17"), cache)
    with pytest.raises(BmcProtocolError) as caught:
        within(driver.get_power_state)
    message = str(caught.value)
    assert "the BMC did not accept cipher suite 17" in message
    assert "set ipmi_cipher_suite to 3 or auto" in message
    assert not caught.value.transient
    assert len(bmc.events("open_session")) == 1  # suite 3 was never proposed
    assert bmc.events("rakp1") == []


@pytest.mark.parametrize("suite", ["auto", "3"])
def test_a_wrong_password_is_an_auth_error_tried_once(
    start_bmc: StartBmc, cache: SessionCache, suite: str
) -> None:
    bmc = start_bmc()
    driver = _driver(bmc.target(password="not-the-password", cipher_suite=suite), cache)
    with pytest.raises(BmcAuthError, match="credentials refused") as caught:
        within(driver.get_power_state)
    assert not caught.value.transient
    assert "not-the-password" not in str(caught.value)
    bmc.settle()
    assert len(bmc.events("rakp1")) == 1, "the login was retried"
    assert len(bmc.events("open_session")) == (2 if suite == "auto" else 1)


@pytest.mark.parametrize("delay", [0.0, SLOW_ANSWER_S])
def test_each_power_command_is_executed_once(
    start_bmc: StartBmc, cache: SessionCache, delay: float
) -> None:
    assert delay < min(READ_ANSWER_WAIT_S, COMMAND_ANSWER_WAIT_S)
    bmc = start_bmc(state="on", delay=delay)
    driver = _driver(bmc.target(), cache)
    within(driver.get_power_state)  # log in first: the handshake is not what is counted
    actions = [Action.CYCLE, Action.RESET, Action.OFF, Action.ON, Action.SOFT_OFF]

    for action in actions:
        within(lambda action=action: driver.send_power_action(action))

    bmc.settle(quiet_s=max(0.3, 2 * delay))
    executed = bmc.executions()
    expected = ["power_cycle", "power_reset", "power_off", "power_on", "power_shutdown"]
    assert _names(executed) == expected, f"the BMC executed {executed}"
    times = [e["t"] for e in executed]
    assert times == sorted(times)


@pytest.mark.parametrize(("privilege", "level"), [("operator", 3), ("administrator", 4)])
def test_the_privilege_is_requested_at_login(
    start_bmc: StartBmc, cache: SessionCache, privilege: str, level: int
) -> None:
    bmc = start_bmc()
    driver = _driver(bmc.target(privilege=privilege), cache)
    within(lambda: driver.send_power_action(Action.ON))
    assert [e["role"] for e in bmc.wait_events("rakp1", 1)] == [level]
    bmc.wait_events("power_on", 1)  # the answer can come before its event is read
    bmc.settle()  # and a second execution would be counted too
    assert _names(bmc.executions()) == ["power_on"]


def test_kg_as_text(start_bmc: StartBmc, cache: SessionCache) -> None:
    bmc = start_bmc(kg="bmc-key-text")
    assert within(_driver(bmc.target(kg="bmc-key-text"), cache).get_power_state) is PowerState.OFF


def test_kg_as_hex(start_bmc: StartBmc, cache: SessionCache) -> None:
    key = "00112233445566778899aabbccddeeff01020304"  # 20 bytes, not valid UTF-8 text
    bmc = start_bmc(kg_hex=key)
    target = bmc.target(kg="0x" + key.upper())
    assert within(_driver(target, cache).get_power_state) is PowerState.OFF


def test_a_missing_kg_is_an_auth_error(start_bmc: StartBmc, cache: SessionCache) -> None:
    bmc = start_bmc(kg="bmc-key-text")
    with pytest.raises(BmcAuthError, match="Kg"):
        within(_driver(bmc.target(), cache).get_power_state)


def test_other_options_never_share_a_session(start_bmc: StartBmc, cache: SessionCache) -> None:
    """pyghmi hands a live session to any login with the same credentials; the
    cache must not let it (other options, other session)."""
    bmc = start_bmc()
    first, second = bmc.target(), bmc.target(cipher_suite="3", privilege="operator")
    with cache.lease(first) as lease:
        first_session = lease.session.ipmi_session
    with cache.lease(second) as lease:
        second_session = lease.session.ipmi_session
    assert second_session is not first_session
    assert [e["role"] for e in bmc.wait_events("rakp1", 2)] == [4, 3]
    assert within(_driver(second, cache).get_power_state) is PowerState.OFF
    assert (cache.logins(first), cache.logins(second)) == (1, 1)


@requires_ipmitool
def test_ipmitool_reads_the_power_state_with_suite_3(start_bmc: StartBmc) -> None:
    """The harness is a BMC other clients accept: ipmitool -C 3 reads its power state."""
    bmc = start_bmc(state="on")
    result = ipmitool(bmc.target(), "power", "status", cipher="3")
    assert result.returncode == 0, result.stderr
    assert "Chassis Power is on" in result.stdout


@requires_ipmitool
def test_ipmitool_powers_it_off_once(start_bmc: StartBmc) -> None:
    bmc = start_bmc(state="on")
    result = ipmitool(bmc.target(), "power", "off", cipher="3")
    assert result.returncode == 0, result.stderr
    bmc.settle()
    assert _names(bmc.executions()) == ["power_off"]


def test_the_server_stops_when_its_stdin_closes() -> None:
    bmc = PyghmiBmcProcess().__enter__()
    process = bmc._process
    assert process is not None
    assert process.stdin is not None
    process.stdin.close()
    try:
        assert process.wait(HANG_GUARD) == 0
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    finally:
        bmc.stop()
