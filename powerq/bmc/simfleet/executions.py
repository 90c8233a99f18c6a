"""Counting what a simulated BMC executed, against what its requests allowed.

The one measure of "never did something twice": a power-changing Chassis
Control the BMC accepted (completion code 0) is an execution, whatever the
client or the database believe was sent. Each request may cause at most
:data:`COMMANDS_PER_ACTION` of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

POWER_CHANGING = frozenset({"power_down", "power_up", "power_cycle", "hard_reset", "soft_shutdown"})
# A cycle is off, then on; a soft-off may fall back to one hard off.
COMMANDS_PER_ACTION: Mapping[str, int] = {
    "on": 1,
    "off": 1,
    "soft_off": 2,
    "cycle": 2,
    "reset": 1,
    "query": 0,
}


def executed(log: Iterable[Mapping[str, Any]]) -> int:
    """Power-changing commands the BMC accepted and ran, from its command log."""
    return sum(
        1
        for entry in log
        if entry.get("command") == "chassis_control"
        and entry.get("action") in POWER_CHANGING
        and entry.get("completion_code") == 0
    )


def beyond_budget(log: Iterable[Mapping[str, Any]], actions: Iterable[str]) -> int:
    """Executions beyond what the requests ``actions`` (their action names) allowed."""
    allowed = sum(COMMANDS_PER_ACTION[action] for action in actions)
    return max(0, executed(log) - allowed)
