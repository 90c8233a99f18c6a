"""The fleet process, its manifest, its control API and the ``powerq sim-fleet`` command."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from powerq.bmc import driver_for
from powerq.bmc.simfleet.cli import sim_fleet
from powerq.bmc.simfleet.controlclient import ControlClient, ControlClientError
from powerq.bmc.simfleet.launcher import FleetStartError, SimFleetProcess
from powerq.bmc.simfleet.ports import free_tcp_port, free_udp_range
from powerq.cli import main
from powerq.states import PowerState
from tests.bmc.helpers import FLEET_SIZE, SimBmc, wait_until, within

pytestmark = pytest.mark.ipmi


def test_manifest_lists_every_bmc_on_contiguous_ports(fleet: SimFleetProcess) -> None:
    manifest = fleet.manifest
    assert len(manifest) == FLEET_SIZE
    assert manifest[0] == {
        "name": "sim-0001",
        "driver": "ipmi",
        "address": "127.0.0.1",
        "port": fleet.base_port,
        "username": "admin",
        "password": "password",
    }
    assert [row["port"] for row in manifest] == list(
        range(fleet.base_port, fleet.base_port + FLEET_SIZE)
    )
    assert len(fleet.control.bmcs()) == FLEET_SIZE


def test_set_power_behind_the_drivers_back(bmc: SimBmc) -> None:
    bmc.control.set_power(bmc.name, "on")
    assert within(driver_for(bmc.target).get_power_state) is PowerState.ON
    bmc.control.set_power(bmc.name, "off")
    assert within(driver_for(bmc.target).get_power_state) is PowerState.OFF


def test_behaviour_and_faults_are_reported(bmc: SimBmc) -> None:
    status = bmc.control.set_behaviour(bmc.name, transition=1.5, soft_delay=None)
    assert status["behaviour"] == {"transition": 1.5, "soft_delay": None}
    status = bmc.control.set_fault(bmc.name, "flaky", every=3)
    assert status["faults"] == {"flaky": {"every": 3, "code": 0xC0}}
    assert bmc.control.clear_fault(bmc.name, "flaky")["faults"] == {}


@pytest.mark.parametrize(
    ("call", "status"),
    [
        (lambda c, n: c.bmc("sim-nope"), "404"),
        (lambda c, n: c.set_fault(n, "gremlins"), "400"),
        (lambda c, n: c.set_fault(n, "lossy", fraction=3.0), "400"),
        (lambda c, n: c.set_power(n, "sideways"), "400"),
        (lambda c, n: c.set_behaviour(n, transition=-1.0), "400"),
    ],
)
def test_bad_control_requests_are_refused(bmc: SimBmc, call: object, status: str) -> None:
    with pytest.raises(ControlClientError, match=status):
        call(bmc.control, bmc.name)  # type: ignore[operator]


def test_fleet_that_cannot_bind_fails_with_the_reason() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        fleet = SimFleetProcess(2, port, control_port=free_tcp_port(), start_timeout=30)
        with pytest.raises(FleetStartError, match="in use"):
            fleet.start()
        fleet.stop()


def test_free_udp_range_is_bindable() -> None:
    base = free_udp_range(50)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
        first.bind(("127.0.0.1", base))


def test_cli_is_registered_and_refuses_non_loopback() -> None:
    runner = CliRunner()
    assert "sim-fleet" in runner.invoke(main, ["--help"]).output
    result = runner.invoke(
        sim_fleet, ["--count", "1", "--base-port", "20000", "--address", "10.0.0.1"]
    )
    assert result.exit_code == 2 and "loopback" in result.output


def test_fleet_stops_when_the_process_that_started_it_dies() -> None:
    """No orphaned fleets: the launcher holds the fleet's stdin; EOF stops it."""
    script = (
        "import json, os\n"
        "from powerq.bmc.simfleet.launcher import SimFleetProcess\n"
        "fleet = SimFleetProcess(2)\n"
        "fleet.start()\n"
        "print(json.dumps({'control': fleet.control_port}), flush=True)\n"
        "os._exit(0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    control = ControlClient(json.loads(result.stdout)["control"], timeout=2.0)
    wait_until(lambda: not _answers(control), what="the orphaned fleet to stop")


def _answers(control: ControlClient) -> bool:
    try:
        control.health()
    except ControlClientError:
        return False
    return True
