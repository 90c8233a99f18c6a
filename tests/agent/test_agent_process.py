"""``powerq agent`` as real processes on the suite's PostgreSQL and Redis: two
agents share the lanes, the lanes of one that stops are taken by the other at
its next tick, a name is one agent's, and a wrong lane list is refused in one
line. (Failover under load, SIGKILL and SIGSTOP: tests/faults/.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import text

from powerq.agent.placement import lanes_of
from powerq.db import session_scope
from tests.cli.processes import still_running, wait_until

pytestmark = pytest.mark.slow

LANES = 4
LEASE_S = "3"


def _holders() -> dict[int, str]:
    """lane -> agent name, for leases that have not expired."""
    with session_scope() as session:
        rows = session.execute(
            text("SELECT lane, owner FROM lane_leases WHERE expires_at > now()")
        ).all()
    return {lane: owner for lane, owner in rows}


def _workers(agent: subprocess.Popen[bytes], count: int) -> list[psutil.Process] | None:
    """The agent's lane workers once there are ``count`` of them."""
    children = psutil.Process(agent.pid).children()
    return children if len(children) == count else None


class Agents:
    """Agents started as ``python -m powerq.cli agent``, each logging to a file."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, "POWERQ_LANES": str(LANES), "POWERQ_LANE_LEASE_S": LEASE_S}
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "powerq.cli", "agent", "--name", name, *args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.running[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@pytest.fixture
def agents(db: None, tmp_path: Path) -> Iterator[Agents]:
    running = Agents(tmp_path)
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
    wait_until(lambda: _holders() == expected, "the lanes shared by rendezvous hashing", 60,
               both_alive, agents.log_dir / "host-a.log")  # fmt: skip
    share = len(lanes_of("host-a", ["host-a", "host-b"], LANES))
    workers_of_a = wait_until(lambda: _workers(a, share), "host-a's lane workers", 30, both_alive)

    a.send_signal(signal.SIGTERM)
    assert a.wait(30) == 0
    assert still_running(workers_of_a) == []
    wait_until(lambda: _holders() == dict.fromkeys(range(LANES), "host-b"),
               "host-b holding every lane", 30, lambda: b.poll() is None,
               agents.log_dir / "host-b.log")  # fmt: skip
    assert wait_until(lambda: _workers(b, LANES), "host-b's lane workers", 30, lambda: True)


def test_an_agent_with_a_lane_list_holds_only_those(agents: Agents) -> None:
    pinned = agents.start("pinned", "--lanes", "1,3")

    wait_until(lambda: _holders() == {1: "pinned", 3: "pinned"}, "lanes 1 and 3 held", 60,
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
