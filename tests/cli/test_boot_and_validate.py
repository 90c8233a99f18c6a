"""``powerq boot``, ``powerq power … --boot-device`` and ``powerq nodes validate``,
end to end: CLI → API → lane worker → IPMI → the simulated BMC's own state and log."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import Cli, error_line
from tests.stack import Stack

pytestmark = [pytest.mark.ipmi, pytest.mark.slow]


def test_boot_sets_the_device_at_the_bmc(live: Stack, cli: Cli) -> None:
    (name,) = live.register_fleet(1)

    result = cli("boot", name, "pxe", "--persistent", "--wait", role="operator")

    assert result.exit_code == 0, result.output
    assert "succeeded" in result.stdout
    assert live.fleet.control.bmc(name)["boot"] == {"device": "pxe", "persistent": True}
    assert live.power_commands(name) == []  # no power command


def test_cycle_with_a_boot_device_sets_it_before_the_off(live: Stack, cli: Cli) -> None:
    (name,) = live.register_fleet(1)

    result = cli("power", name, "cycle", "--boot-device", "pxe", "--wait", "--json",
                 role="operator")  # fmt: skip

    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["request"]["evidence"] == "off_then_on"
    log = [e["command"] for e in live.fleet.control.log(name)]
    boot_at = log.index("set_boot_options")
    assert boot_at < log.index("chassis_control")
    assert [e["action"] for e in live.power_commands(name)] == ["power_down", "power_up"]
    assert live.fleet.control.bmc(name)["boot"]["device"] == "pxe"


def test_validate_reports_a_bad_password_in_one_line(live: Stack, cli: Cli) -> None:
    good, bad = live.register_fleet(2)
    live.fleet.control.set_fault(bad, "wrong_credentials")

    result = cli("nodes", "validate", good, bad, "--json", role="operator")

    assert result.exit_code == 1
    rows = {row["node"]: row["request"] for row in json.loads(result.stdout)}
    assert rows[good]["status"] == "succeeded" and rows[good]["observed_after"] in ("on", "off")
    assert rows[bad]["status"] == "failed"
    assert "credentials refused" in rows[bad]["error"] and "\n" not in rows[bad]["error"]
    assert "1 of 2 node(s) did not succeed" in error_line(result, alone=False)
