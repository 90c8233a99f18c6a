"""A BMC serving several systems: the node must name its system."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from powerq.bmc.base import BmcProtocolError
from powerq.bmc.redfish import RedfishDriver, RedfishSession
from powerq.bmc.redfish_sessions import SessionCache
from powerq.states import Action
from tests.redfish.conftest import target_of
from tests.redfish.emulator import Emulator

Sessions = SessionCache[RedfishSession]


@pytest.fixture(scope="module")
def chassis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with Emulator(tmp_path_factory.mktemp("redfish-two"), systems=("blade-1", "blade-2")) as bmc:
        yield bmc


def test_no_system_path_with_several_systems_names_them(
    chassis: Emulator, sessions: Sessions
) -> None:
    with pytest.raises(BmcProtocolError) as caught:
        RedfishDriver(target_of(chassis), sessions).get_power_state()

    message = str(caught.value)
    assert "lists 2 systems" in message and "system option" in message
    for name in ("blade-1", "blade-2"):
        assert chassis.system_path(name) in message


def test_the_named_system_is_the_one_acted_on(chassis: Emulator, sessions: Sessions) -> None:
    one, two = chassis.system_path("blade-1"), chassis.system_path("blade-2")
    driver = RedfishDriver(target_of(chassis, system=two), sessions)

    driver.send_power_action(Action.ON)

    assert chassis.wait_power(two, "On") == "On"
    assert chassis.power_state(one) == "Off"
