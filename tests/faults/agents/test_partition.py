"""Agent failover, continued: an agent frozen past its lease with its workers
(SIGSTOP, then SIGCONT) and a third agent joining mid-batch, on the stack of
``test_failover.py`` (its docstring says what is checked). A file of its
own so that pytest-xdist runs it beside the SIGKILL test."""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil
import pytest

from powerq.tasks import journal
from tests.faults.agents.stack import (
    TAKEOVER_BOUND_S,
    TICK_S,
    AgentStack,
    all_gone,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.ipmi]


def test_partitioned_agent_wakes_to_find_its_lanes_gone(
    agent_stack: Callable[..., AgentStack],
) -> None:
    started = time.monotonic()
    s = agent_stack(nodes=300, lanes=9, transition=2.0)
    ids = s.cycle_all()
    s.wait_running(ids, at_least=100)

    victim = "a3"
    lanes_of_victim = s.held_by()[victim]
    fences_before = {lane: s.leases()[lane].fence for lane in lanes_of_victim}
    agent = psutil.Process(s.pid(victim))
    workers = s.workers(victim)
    old_pids = {worker.pid for worker in workers}
    for process in [agent, *workers]:
        process.suspend()  # SIGSTOP: the agent and its lane workers, as if cut off
    stopped = time.monotonic()
    running_at_stop = s.running(ids)

    takeover_s = s.wait_lanes(
        s.placed({"a1", "a2"}), "the others hold the frozen agent's lanes", TAKEOVER_BOUND_S
    )
    leases = s.leases()
    assert all(leases[lane].fence > fences_before[lane] for lane in lanes_of_victim)
    time.sleep(TICK_S * 2)  # the new owners' workers start consuming those lanes

    # Wake the workers first, their agent still frozen: each stops by itself.
    woke = time.monotonic()
    for worker in workers:
        worker.resume()
    deadline = woke + 5
    while not all_gone(workers):
        assert time.monotonic() < deadline, "a woken lane worker kept running"
        time.sleep(0.02)
    workers_stopped_s = time.monotonic() - woke
    agent.resume()

    # The agent, awake again, rejoins: lanes are shared out over three agents again.
    rejoin_s = s.wait_lanes(
        s.placed({"a1", "a2", "a3"}), "the woken agent gets its share again", TAKEOVER_BOUND_S
    )

    s.assert_all_succeeded(ids, timeout=120)
    s.assert_bmcs_cycled_once()
    late = [run for run in journal.read(s.journal_dir) if run.pid in old_pids and run.end > woke]
    assert not late, f"a frozen worker went on with a run after it woke at {woke:.3f}: {late[:3]}"
    s.assert_journal_clean()
    print(
        f"\n{len(ids)} cycles, {running_at_stop} running when {victim} and its "
        f"{len(workers)} workers were frozen; lanes taken over {takeover_s:.1f} s after; "
        f"woken workers stopped by themselves in {workers_stopped_s:.2f} s; agent back with a "
        f"share {rejoin_s:.1f} s after waking; frozen {woke - stopped:.1f} s; "
        f"set-up {s.setup}, test {time.monotonic() - started:.0f} s"
    )


def test_third_agent_joins_mid_batch(agent_stack: Callable[..., AgentStack]) -> None:
    started = time.monotonic()
    s = agent_stack(nodes=300, lanes=12, agents=2, transition=2.0)
    assert set(s.held_by()) == {"a1", "a2"}
    ids = s.cycle_all()
    s.wait_running(ids, at_least=100)
    s.start_agent("a3")
    moved_s = s.wait_lanes(
        s.placed({"a1", "a2", "a3"}), "the new agent holds its share", TAKEOVER_BOUND_S
    )
    held = s.held_by()
    assert all(2 <= len(lanes) <= 6 for lanes in held.values()), held  # about 12 / 3 each
    running_after = s.running(ids)

    s.assert_all_succeeded(ids, timeout=120)
    s.assert_bmcs_cycled_once()
    s.assert_journal_clean()
    print(
        f"\n{len(ids)} cycles; a3 joined and held {len(held['a3'])} lanes {moved_s:.1f} s "
        f"later ({running_after} requests still running then); shares "
        f"{ {name: len(lanes) for name, lanes in sorted(held.items())} }; "
        f"set-up {s.setup}, test {time.monotonic() - started:.0f} s"
    )
