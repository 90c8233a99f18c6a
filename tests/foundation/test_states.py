"""The pure power rules, table-driven."""

from __future__ import annotations

import pytest

from powerq.states import (
    Action,
    DesiredPowerState,
    PowerState,
    command_for,
    desired_after,
    needs_command,
    target_state,
)
from powerq.tasks.routing import lane_for

ON, OFF, UNKNOWN = PowerState.ON, PowerState.OFF, PowerState.UNKNOWN


@pytest.mark.parametrize(
    ("action", "observed", "needed"),
    [
        (Action.ON, ON, False),  # "on" of a running machine must not touch it
        (Action.ON, OFF, True),
        (Action.ON, UNKNOWN, True),
        (Action.OFF, OFF, False),
        (Action.OFF, ON, True),
        (Action.SOFT_OFF, OFF, False),
        (Action.SOFT_OFF, ON, True),
        (Action.CYCLE, ON, True),
        (Action.CYCLE, OFF, True),
        (Action.RESET, ON, True),
        (Action.QUERY, ON, False),
        (Action.QUERY, OFF, False),
    ],
)
def test_needs_command(action: Action, observed: PowerState, needed: bool) -> None:
    assert needs_command(action, observed) is needed


@pytest.mark.parametrize(
    ("action", "desired", "target"),
    [
        (Action.ON, DesiredPowerState.ON, ON),
        (Action.OFF, DesiredPowerState.OFF, OFF),
        (Action.SOFT_OFF, DesiredPowerState.OFF, OFF),
        (Action.CYCLE, DesiredPowerState.ON, ON),
        (Action.RESET, DesiredPowerState.ON, ON),
        (Action.QUERY, None, None),
    ],
)
def test_desired_and_target(
    action: Action, desired: DesiredPowerState | None, target: PowerState | None
) -> None:
    assert desired_after(action) is desired
    assert target_state(action) is target


@pytest.mark.parametrize(
    ("action", "observed", "off_verified", "command"),
    [
        (Action.CYCLE, ON, False, Action.OFF),  # phase 1: hard off
        (Action.CYCLE, ON, True, Action.ON),  # phase 2, once off was read back
        (Action.CYCLE, OFF, False, Action.ON),  # off already seen: only the on phase
        (Action.RESET, ON, False, Action.RESET),
        (Action.RESET, OFF, False, Action.ON),
        (Action.OFF, ON, False, Action.OFF),
        (Action.SOFT_OFF, ON, False, Action.SOFT_OFF),
    ],
)
def test_command_for(
    action: Action, observed: PowerState, off_verified: bool, command: Action
) -> None:
    assert command_for(action, observed, off_verified=off_verified) is command


def test_lane_mapping_is_stable_and_spread() -> None:
    names = [f"node-{i:04d}" for i in range(800)]
    lanes = [lane_for(name, 8) for name in names]
    assert lanes == [lane_for(name, 8) for name in names]
    assert lane_for("node-0001", 8) == 5  # fixed: a changed hash would move every node
    counts = [lanes.count(k) for k in range(8)]
    assert min(counts) > 50
