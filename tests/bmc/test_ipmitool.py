"""The real ``ipmitool -I lanplus`` binary against a simulated BMC, unchanged."""

from __future__ import annotations

import pytest

from tests.bmc.helpers import SimBmc, ipmitool, requires_ipmitool, wait_until

pytestmark = [pytest.mark.ipmi, requires_ipmitool]


def _status(bmc: SimBmc) -> str:
    result = ipmitool(bmc.target, "chassis", "power", "status")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _power(bmc: SimBmc, verb: str) -> None:
    result = ipmitool(bmc.target, "chassis", "power", verb)
    assert result.returncode == 0, result.stderr


def _negotiated_suites(bmc: SimBmc) -> list[str]:
    return [e["detail"] for e in bmc.control.log(bmc.name) if e["command"] == "rakp3"]


def test_default_cipher_suite_is_17_after_asking_for_the_list(bmc: SimBmc) -> None:
    """No ``-C``: ipmitool 1.8.19 asks Get Channel Cipher Suites and picks 17 (no 10 s stall)."""
    assert _status(bmc) == "Chassis Power is off"
    commands = [e["command"] for e in bmc.control.log(bmc.name)]
    assert "get_channel_cipher_suites" in commands
    assert _negotiated_suites(bmc) == ["status 0x00, cipher suite 17"]
    assert bmc.control.bmc(bmc.name)["sessions_active"] == 0  # ipmitool closed its session


@pytest.mark.parametrize("suite", ["3", "17"])
def test_explicit_cipher_suites_work(bmc: SimBmc, suite: str) -> None:
    result = ipmitool(bmc.target, "chassis", "power", "status", cipher=suite)
    assert result.returncode == 0, result.stderr
    assert _negotiated_suites(bmc) == [f"status 0x00, cipher suite {suite}"]


def test_unsupported_cipher_suite_is_refused_cleanly(bmc: SimBmc) -> None:
    result = ipmitool(bmc.target, "chassis", "power", "status", cipher="1")
    assert result.returncode != 0
    assert "no matching cipher suite" in result.stderr.lower()


def test_wrong_password_is_refused(bmc: SimBmc) -> None:
    result = ipmitool(bmc.target, "chassis", "power", "status", password="not-it")
    assert result.returncode != 0
    assert "unable to establish ipmi v2" in result.stderr.lower()
    assert bmc.control.bmc(bmc.name)["sessions_opened"] == 0


def test_power_on_then_status_follows_the_delayed_transition(bmc: SimBmc) -> None:
    bmc.control.set_behaviour(bmc.name, transition=3.0)
    _power(bmc, "on")
    assert _status(bmc) == "Chassis Power is off"  # still in its 1.5 s transition
    wait_until(lambda: _status(bmc) == "Chassis Power is on", what="power on")


def test_power_off(bmc: SimBmc) -> None:
    bmc.control.set_power(bmc.name, "on")
    _power(bmc, "off")
    wait_until(lambda: _status(bmc) == "Chassis Power is off", what="power off")


def test_power_cycle_goes_off_then_on(bmc: SimBmc) -> None:
    bmc.control.set_behaviour(bmc.name, transition=2.0)
    bmc.control.set_power(bmc.name, "on")
    _power(bmc, "cycle")
    wait_until(lambda: _status(bmc) == "Chassis Power is off", what="the off half")
    wait_until(lambda: _status(bmc) == "Chassis Power is on", what="the on half")
    [entry] = [e for e in bmc.control.log(bmc.name) if e["command"] == "chassis_control"]
    assert entry["action"] == "power_cycle" and entry["transition_end"] is not None


def test_power_reset_is_logged(bmc: SimBmc) -> None:
    bmc.control.set_power(bmc.name, "on")
    _power(bmc, "reset")
    assert _status(bmc) == "Chassis Power is on"
    assert bmc.control.bmc(bmc.name)["resets"] == 1
    actions = [e["action"] for e in bmc.control.log(bmc.name) if e["command"] == "chassis_control"]
    assert actions == ["hard_reset"]


def test_power_soft_takes_the_soft_delay(bmc: SimBmc) -> None:
    bmc.control.set_behaviour(bmc.name, soft_delay=3.0)
    bmc.control.set_power(bmc.name, "on")
    _power(bmc, "soft")
    assert _status(bmc) == "Chassis Power is on"
    wait_until(lambda: _status(bmc) == "Chassis Power is off", what="soft off")


def test_cycle_while_off_is_not_supported_in_present_state(bmc: SimBmc) -> None:
    result = ipmitool(bmc.target, "chassis", "power", "cycle")
    assert result.returncode != 0
    assert "not supported in present state" in result.stderr.lower()
