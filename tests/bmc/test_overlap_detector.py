"""The fleet's overlap detector catches power operations that overlap on one machine."""

from __future__ import annotations

import pytest

from powerq.bmc import driver_for
from powerq.states import Action
from tests.bmc.helpers import SimBmc, wait_until, within

pytestmark = pytest.mark.ipmi


def _send(bmc: SimBmc, action: Action) -> None:
    within(lambda: driver_for(bmc.target).send_power_action(action))


def _idle(bmc: SimBmc) -> bool:
    return not bmc.control.bmc(bmc.name)["transitioning"]


def test_a_deliberately_overlapping_pair_is_caught(bmc: SimBmc) -> None:
    bmc.control.set_behaviour(bmc.name, transition=10.0)
    _send(bmc, Action.ON)
    _send(bmc, Action.OFF)  # while the power-on is still in its transition
    overlaps = bmc.control.overlaps()
    assert overlaps["per_bmc"].get(bmc.name) == 1
    assert overlaps["total"] >= 1
    first, second = [e for e in bmc.control.log(bmc.name) if e["command"] == "chassis_control"]
    assert second["overlapped"] and not first["overlapped"]
    assert first["superseded"]


def test_serialised_operations_are_not_overlaps(bmc: SimBmc) -> None:
    bmc.control.set_behaviour(bmc.name, transition=0.5)
    for action in (Action.ON, Action.OFF, Action.ON):
        _send(bmc, action)
        wait_until(lambda: _idle(bmc), what="the transition to end")
    assert bmc.control.bmc(bmc.name)["overlaps"] == 0


def test_a_cycle_is_one_operation_spanning_both_halves(bmc: SimBmc) -> None:
    bmc.control.set_behaviour(bmc.name, transition=3.0)
    bmc.control.set_power(bmc.name, "on")
    _send(bmc, Action.CYCLE)
    wait_until(lambda: bmc.control.bmc(bmc.name)["power"] == "off", what="the off half")
    _send(bmc, Action.ON)  # during the on half: still the cycle's transition
    assert bmc.control.bmc(bmc.name)["overlaps"] == 1


def test_reset_logs_clears_the_counts(bmc: SimBmc) -> None:
    bmc.control.set_behaviour(bmc.name, transition=10.0)
    _send(bmc, Action.ON)
    _send(bmc, Action.ON)
    assert bmc.control.bmc(bmc.name)["overlaps"] == 1
    bmc.control.reset_logs()
    assert bmc.control.bmc(bmc.name)["overlaps"] == 0
    assert bmc.control.log(bmc.name) == []
