"""FreeIPMI's ``ipmipower`` (the batch benchmark's baseline) against simulated BMCs, unchanged.

The benchmark counts what each BMC executed from its own log, so these tests
pin down that one ``ipmipower --off``/``--on`` executes exactly one Chassis
Control per BMC on a sim BMC that answers promptly, with the flags bench/ipmipower.py
passes (``-D LAN_2_0 -l admin -I 3``; no workaround flags).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Sequence

import pytest

from bench import ipmipower as tool
from powerq.bmc.simfleet.executions import executed
from powerq.bmc.simfleet.launcher import SimFleetProcess
from tests.bmc.helpers import HANG_GUARD, SOFT_DELAY, TRANSITION, SimBmc

pytestmark = [
    pytest.mark.ipmi,
    pytest.mark.skipif(
        tool.binary() is None,
        reason="ipmipower is not installed (apt-get install -y freeipmi-tools)",
    ),
]


@pytest.fixture(scope="module")
def own_fleet() -> Iterator[SimFleetProcess]:
    """A fleet of this module's own, so the session's shared pool of BMCs is not used up."""
    with SimFleetProcess(12, transition=TRANSITION, soft_delay=SOFT_DELAY) as running:
        yield running


@pytest.fixture(scope="module")
def make_bmc(own_fleet: SimFleetProcess) -> Callable[[], SimBmc]:
    """Each call: a BMC of ``own_fleet`` no other test touched."""
    rows = iter(zip(own_fleet.manifest, own_fleet.targets(), strict=True))

    def take() -> SimBmc:
        row, target = next(rows)
        return SimBmc(row["name"], target, own_fleet.control)

    return take


@pytest.fixture
def bmc(make_bmc: Callable[[], SimBmc]) -> SimBmc:
    return make_bmc()


def _row(bmc: SimBmc) -> dict[str, object]:
    t = bmc.target
    return {"address": t.address, "port": t.port, "username": t.username, "password": t.password}


def _ipmipower(bmcs: Sequence[SimBmc], *flags: str) -> subprocess.CompletedProcess[str]:
    program = tool.binary()
    assert program is not None
    return subprocess.run(
        tool.argv(program, [_row(b) for b in bmcs], flags),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )


def _power_commands(bmc: SimBmc) -> list[str]:
    return [
        str(e["action"])
        for e in bmc.control.log(bmc.name)
        if e["command"] == "chassis_control" and e["completion_code"] == 0
    ]


def test_status_reads_the_machine(bmc: SimBmc) -> None:
    result = _ipmipower([bmc], "--stat")
    assert result.returncode == 0, result.stdout + result.stderr
    assert tool.outcomes(result.stdout) == {"off": 1}
    bmc.control.set_power(bmc.name, "on")
    assert tool.outcomes(_ipmipower([bmc], "--stat").stdout) == {"on": 1}
    assert bmc.control.bmc(bmc.name)["sessions_active"] == 0  # it closed its sessions


def test_off_then_on_verified_each_execute_exactly_once(bmc: SimBmc) -> None:
    bmc.control.set_power(bmc.name, "on")
    off = _ipmipower([bmc], "--off", "--wait-until-off")
    assert off.returncode == 0, off.stdout + off.stderr
    assert tool.outcomes(off.stdout) == {"ok": 1}
    assert bmc.control.bmc(bmc.name)["power"] == "off"  # it waited for the transition
    assert _power_commands(bmc) == ["power_down"]

    on = _ipmipower([bmc], "--on", "--wait-until-on")
    assert on.returncode == 0, on.stdout + on.stderr
    assert bmc.control.bmc(bmc.name)["power"] == "on"
    log = bmc.control.log(bmc.name)
    assert _power_commands(bmc) == ["power_down", "power_up"]
    assert executed(log) == 2
    assert bmc.control.bmc(bmc.name)["overlaps"] == 0
    # verified: it read the state after the command, until it saw the target
    statuses = [e for e in log if e["command"] == "get_chassis_status"]
    assert len(statuses) >= 2


def test_unverified_off_returns_before_the_transition_ends(bmc: SimBmc) -> None:
    bmc.control.set_power(bmc.name, "on")
    bmc.control.set_behaviour(bmc.name, transition=2.0)
    result = _ipmipower([bmc], "--off")
    assert result.returncode == 0, result.stdout + result.stderr
    status = bmc.control.bmc(bmc.name)
    assert status["transitioning"] and status["power"] == "on"
    assert _power_commands(bmc) == ["power_down"]


def test_many_bmcs_by_host_and_port_in_one_run(make_bmc: Callable[[], SimBmc]) -> None:
    """The benchmark's form: one ``-h 127.0.0.1:PORT,...`` list, ``-F`` BMCs in flight."""
    bmcs = [make_bmc() for _ in range(6)]
    for bmc in bmcs:
        bmc.control.set_power(bmc.name, "on")
    result = _ipmipower(bmcs, "--off", "--wait-until-off")
    assert result.returncode == 0, result.stdout + result.stderr
    assert tool.outcomes(result.stdout) == {"ok": 6}
    for bmc in bmcs:
        assert bmc.control.bmc(bmc.name)["power"] == "off"
        assert _power_commands(bmc) == ["power_down"]


def test_a_bmc_slower_than_its_retransmission_timeout_executes_every_resend(
    bmc: SimBmc,
) -> None:
    """What the benchmark's duplicate column counts for ipmipower: it resends an unanswered
    request after ``--retransmission-timeout`` under a new rqSeq and ignores late answers
    to the earlier copies, so a BMC slower than that runs the power command once per
    copy (overlapping its own transition) while ipmipower reports a plain ``ok``.

    (Defaults are 400 ms and a longer timeout after 8 resends; shortened here.
    Issue 15 saw this at 1,000 BMCs, when the fleet's event loop fell behind.)
    """
    bmc.control.set_power(bmc.name, "on")
    bmc.control.set_fault(bmc.name, "slow", delay=0.15)
    result = _ipmipower(
        [bmc],
        "--off",
        "--wait-until-off",
        "--retransmission-timeout=100",
        "--retransmission-backoff-count=3",
    )
    bmc.control.clear_fault(bmc.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert tool.outcomes(result.stdout) == {"ok": 1}
    log = bmc.control.log(bmc.name)
    assert executed(log) > 1, "every resend is a new command to the BMC"
    assert not [e for e in log if e["command"] == "retransmission"]  # none identical
    assert bmc.control.bmc(bmc.name)["overlaps"] >= 1


def test_ipmi_1_5_default_driver_is_refused(bmc: SimBmc) -> None:
    """Why ``-D LAN_2_0``: the sim advertises RMCP+ only, so ipmipower's IPMI 1.5 default
    stops at the capabilities answer, before any session and any command."""
    program = tool.binary()
    assert program is not None
    t = bmc.target
    result = subprocess.run(
        [program, "-u", t.username, "-p", t.password, "-h", f"{t.address}:{t.port}", "--stat"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert result.returncode != 0
    assert "authentication type unavailable" in result.stdout + result.stderr
    assert [e["command"] for e in bmc.control.log(bmc.name)] == ["get_channel_auth_caps"]


def test_missing_binary_says_how_to_install() -> None:
    assert "apt-get install -y freeipmi-tools" in tool.INSTALL_HINT
