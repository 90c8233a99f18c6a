"""``powerq agent`` as real processes on the suite's PostgreSQL and Redis: two
agents share the lanes, the lanes of one that stops are taken by the other at
its next tick, a name is one agent's, and a wrong lane list is refused in one
line. (Failover under load, SIGKILL and SIGSTOP: tests/faults/.)"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerq.agent.placement import lanes_of
from tests.agent.agents import Agents, holders, workers
from tests.cli.processes import still_running, wait_until

pytestmark = pytest.mark.slow

LANES = 4
LEASE_S = "3"


@pytest.fixture
def agents(db: None, tmp_path: Path) -> Iterator[Agents]:
    running = Agents(tmp_path, {"POWERQ_LANES": str(LANES), "POWERQ_LANE_LEASE_S": LEASE_S})
    try:
        yield running
    finally:
        running.stop_all()


def test_two_agents_share_the_lanes_and_one_takes_all_when_the_other_stops(
    agents: Agents,
) -> None:
    a, b = agents.start("host-a"), agents.start("host-b")
    expected = {lane: "host-a" for lane in lanes_of("host-a", ["host-a", "host-b"], LANES)}
    expected |= {lane: "host-b" for lane in range(LANES) if lane not in expected}
    both_alive = lambda: a.poll() is None and b.poll() is None  # noqa: E731
    wait_until(lambda: holders() == expected, "the lanes shared by rendezvous hashing", 60,
               both_alive, agents.log_dir / "host-a.log")  # fmt: skip
    share = len(lanes_of("host-a", ["host-a", "host-b"], LANES))
    workers_of_a = wait_until(lambda: workers(a, share), "host-a's lane workers", 30, both_alive)

    a.send_signal(signal.SIGTERM)
    assert a.wait(30) == 0
    assert still_running(workers_of_a) == []
    wait_until(lambda: holders() == dict.fromkeys(range(LANES), "host-b"),
               "host-b holding every lane", 30, lambda: b.poll() is None,
               agents.log_dir / "host-b.log")  # fmt: skip
    assert wait_until(lambda: workers(b, LANES), "host-b's lane workers", 30, lambda: True)


def test_an_agent_with_a_lane_list_holds_only_those(agents: Agents) -> None:
    pinned = agents.start("pinned", "--lanes", "1,3")

    wait_until(lambda: holders() == {1: "pinned", 3: "pinned"}, "lanes 1 and 3 held", 60,
               lambda: pinned.poll() is None, agents.log_dir / "pinned.log")  # fmt: skip


def test_a_second_agent_of_the_same_name_is_refused_in_one_line(agents: Agents) -> None:
    first = agents.start("twin")
    wait_until(lambda: "registered" in agents.log("twin"), "the first twin registered", 60,
               lambda: first.poll() is None)  # fmt: skip

    second = agents.start("twin")
    assert second.wait(60) == 1
    assert "another powerq agent named 'twin' is running" in agents.log("twin")
    assert first.poll() is None


def test_a_lane_outside_the_configured_lanes_is_refused(agents: Agents) -> None:
    wrong = agents.start("wrong", "--lanes", "2-9")

    assert wrong.wait(60) == 2
    assert f"lanes must be 0 … {LANES - 1} (POWERQ_LANES={LANES})" in agents.log("wrong")
