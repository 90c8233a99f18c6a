"""At most once on the wire: a power-changing command is transmitted once.

The BMC here is slow to answer (0.8 s, longer than pyghmi's 0.5-1 s retry
timer) and runs every request it receives, a client's retransmission
included, as some real BMCs do. What counts is what the BMC executed: the
``chassis_control`` entries of its own log, never what the client says it sent.
"""

from __future__ import annotations

from typing import Any

import pytest

from powerq.bmc import driver_for
from powerq.bmc.base import BmcAckUnknown, BmcUnreachable
from powerq.bmc.ipmi_probe import PROBE_TIMEOUT_S, PROBE_TRIES
from powerq.states import Action, PowerState
from tests.bmc.helpers import SimBmc, wait_until, within

pytestmark = pytest.mark.ipmi

SLOW_ANSWER_S = 0.8


def _executed(bmc: SimBmc) -> list[dict[str, Any]]:
    return [dict(e) for e in bmc.control.log(bmc.name) if e["command"] == "chassis_control"]


def _careless_and_slow(bmc: SimBmc, delay: float = SLOW_ANSWER_S) -> None:
    bmc.control.set_fault(bmc.name, "executes_retransmissions")
    bmc.control.set_fault(bmc.name, "slow", delay=delay)


@pytest.mark.parametrize(
    ("start", "action"),
    [("on", Action.CYCLE), ("on", Action.RESET), ("on", Action.OFF), ("off", Action.ON)],
)
def test_a_slow_careless_bmc_executes_each_command_once(
    bmc: SimBmc, start: str, action: Action
) -> None:
    bmc.control.set_power(bmc.name, start)
    _careless_and_slow(bmc)
    driver = driver_for(bmc.target)
    within(driver.get_power_state)  # log in first: the handshake is not what is counted
    bmc.control.reset_logs()

    within(lambda: driver.send_power_action(action))

    executed = _executed(bmc)
    assert len(executed) == 1, f"the BMC ran {action.value} {len(executed)} times: {executed}"


def test_no_answer_means_maybe_sent_and_nothing_is_sent_again(bmc: SimBmc) -> None:
    bmc.control.set_power(bmc.name, "on")
    driver = driver_for(bmc.target)
    within(driver.get_power_state)
    _careless_and_slow(bmc, delay=6.0)  # answers only after the client gave up
    bmc.control.reset_logs()

    with pytest.raises(BmcAckUnknown, match="may or may not"):
        within(lambda: driver.send_power_action(Action.CYCLE))

    wait_until(lambda: len(_executed(bmc)) >= 1, what="the command to reach the BMC")
    bmc.control.clear_fault(bmc.name)
    wait_until(lambda: within(driver.get_power_state) is PowerState.ON, what="the cycle to end")
    assert len(_executed(bmc)) == 1


def test_a_dead_bmc_is_found_dead_by_two_probes_without_a_login(bmc: SimBmc) -> None:
    """A lane spends at most PROBE_TRIES x PROBE_TIMEOUT_S on a dead BMC, not a login's
    retries: counted in datagrams the BMC received, not in seconds."""
    bmc.control.set_fault(bmc.name, "down")
    before = bmc.control.bmc(bmc.name)["packets_received"]

    with pytest.raises(BmcUnreachable, match="no answer to an IPMI probe"):
        within(driver_for(bmc.target).get_power_state)

    assert bmc.control.bmc(bmc.name)["packets_received"] - before == PROBE_TRIES
    assert PROBE_TRIES * PROBE_TIMEOUT_S <= 1.0


def test_a_read_of_a_bmc_that_died_mid_session_is_sent_once(bmc: SimBmc) -> None:
    driver = driver_for(bmc.target)
    within(driver.get_power_state)  # a session is open
    bmc.control.set_fault(bmc.name, "down")
    before = bmc.control.bmc(bmc.name)["packets_received"]

    with pytest.raises(BmcUnreachable):
        within(driver.get_power_state)

    # the read, sent once, then one Close Session as the broken session is dropped
    # (pyghmi on its own would have resent the read for seconds)
    assert bmc.control.bmc(bmc.name)["packets_received"] - before == 2
