"""Agent failover: lanes change hands under fenced leases, and no BMC notices.

Real processes on loopback, on a throwaway Redis and the suite's PostgreSQL:
three ``powerq agent --lanes auto`` (each forking one Celery worker per lane
it holds), the control worker with beat (sweeps every second), the simulated
IPMI fleet, and with ``POWERQ_STEP_JOURNAL`` every lane worker's claimed runs
journalled. A batch ``cycle`` of every node runs while an agent is killed
(SIGKILL), frozen past its lease with its workers (SIGSTOP, then SIGCONT),
or while a third agent joins. Every request must succeed, every BMC must have
executed exactly one power-down and one power-up (counted in its own command
log), the fleet must see no two operations overlap on one machine, and the
journal must show no lane consumed by two processes at once, with fences per
lane that only go up. Time bounds are hang guards, not speed assertions.

The SIGKILL test runs :data:`KILL_NODES` BMCs: 1,000 by default (45-76 s on
this 2-core machine while other test runs shared it; the other two tests run
300 BMCs, 15-47 s each). ``POWERQ_FAILOVER_NODES=3000`` runs the 3,000 the
issue asks for. It does not pass here yet: one run (load average 50-70 from
other runs) still had 551 requests outstanding at the 180 s wait; another
(load average 9-30) took 183 s and 384 cycles failed "off/on not verified
within 120 s" (sent or maybe sent, never seen at the BMC; cause not yet
established). So 3,000 is not the default.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from kombu import Queue
from sqlalchemy import text

from powerq.agent import placement
from powerq.batches import BatchSpec, create_batch
from powerq.bmc.simfleet.executions import POWER_CHANGING
from powerq.bmc.simfleet.launcher import SimFleetProcess
from powerq.db import get_engine, session_scope
from powerq.imports import import_nodes
from powerq.inventory import NodeSpec
from powerq.states import Action, DriverKind, RequestStatus
from powerq.tasks import journal
from powerq.tasks.app import app
from powerq.tasks.batch_pump import dispatch_releases
from powerq.tasks.routing import lane_queue
from tests.faults.conftest import FaultStack, _environment
from tests.faults.services import ThrowawayRedis

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.ipmi]

KILL_NODES = int(os.environ.get("POWERQ_FAILOVER_NODES", "1000"))
LEASE_S = 4.0
TICK_S = LEASE_S / 5
SWEEP_S = 1.0
# Hang guard for a takeover: lease expiry + one tick + one sweep, three times over.
TAKEOVER_BOUND_S = 3 * (LEASE_S + TICK_S + SWEEP_S) + 5
# What each BMC must have executed for one cycle: off, then on (powerq's cycle).
ONE_CYCLE = ["power_down", "power_up"]


_RUNNING = text("SELECT count(*) FROM power_requests WHERE id = ANY(:ids) AND status = 'running'")


@dataclass(frozen=True)
class Lease:
    """One row of ``lane_leases`` as seen at one moment."""

    lane: int
    owner: str
    fence: int
    live: bool


@dataclass
class AgentStack:
    """A :class:`FaultStack` whose lanes are run by agents."""

    stack: FaultStack
    lanes: int
    journal_dir: Path
    agents: list[str] = field(default_factory=list)
    seen: dict[int, list[int]] = field(default_factory=dict)  # lane -> fences seen, in order
    setup: dict[str, float] = field(default_factory=dict)  # seconds per set-up phase

    # --- processes ----------------------------------------------------------------
    def start_agent(self, name: str) -> None:
        """``powerq agent --lanes auto --name NAME`` as a subprocess (its log in the stack's)."""
        self.stack.processes.python(name, "powerq.cli", "agent", "--lanes", "auto", "--name", name)
        self.agents.append(name)

    def dump_agents(self) -> None:
        """Have every live agent write its threads' stacks to its log, and end
        (SIGABRT with PYTHONFAULTHANDLER): for a test that failed waiting on them."""
        for name in self.agents:
            child = self.stack.processes.children.get(name)
            if child is not None and child.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid, signal.SIGABRT)

    def pid(self, name: str) -> int:
        return self.stack.processes.children[name].process.pid

    def workers(self, name: str) -> list[psutil.Process]:
        """Agent ``name``'s lane workers (its children) now."""
        return psutil.Process(self.pid(name)).children(recursive=True)

    # --- leases -------------------------------------------------------------------
    def leases(self) -> dict[int, Lease]:
        """Every lane's lease now (and note each fence seen, for :meth:`assert_fences_rose`)."""
        with get_engine().connect() as conn:
            rows = conn.execute(
                text("SELECT lane, owner, fence, expires_at > now() AS live FROM lane_leases")
            ).all()
        found = {row.lane: Lease(row.lane, row.owner, row.fence, row.live) for row in rows}
        for lease in found.values():
            fences = self.seen.setdefault(lease.lane, [])
            if not fences or fences[-1] != lease.fence:
                fences.append(lease.fence)
        return found

    def held_by(self) -> dict[str, set[int]]:
        """Agent -> the lanes it holds a live lease on."""
        owners: dict[str, set[int]] = {}
        for lease in self.leases().values():
            if lease.live:
                owners.setdefault(lease.owner, set()).add(lease.lane)
        return owners

    def wait_lanes(
        self, condition: Callable[[dict[str, set[int]]], bool], what: str, timeout: float
    ) -> float:
        """Poll the leases until ``condition(held_by())``; return the seconds it took."""
        start = time.monotonic()
        while not condition(self.held_by()):
            if time.monotonic() - start > timeout:
                held = self.held_by()
                self.dump_agents()
                raise TimeoutError(
                    f"{what}: not within {timeout:.0f} s; leases {held}; where each agent "
                    f"was: {self.stack.processes.log_dir}"
                )
            time.sleep(0.05)
        return time.monotonic() - start

    def placed(self, agents: set[str]) -> Callable[[dict[str, set[int]]], bool]:
        """A condition for :meth:`wait_lanes`: every lane held by the agent that
        rendezvous hashing over ``agents`` names for it, and no other."""
        wanted = {agent: placement.lanes_of(agent, agents, self.lanes) for agent in agents}
        wanted = {agent: lanes for agent, lanes in wanted.items() if lanes}
        return lambda held: held == wanted

    def wait_all_consuming(self, timeout: float = 60.0) -> None:
        """Until every lane is held and its worker (``laneK@AGENT``) answers a ping."""

        def every_lane_answers(held: dict[str, set[int]]) -> bool:
            wanted = {f"lane{lane}@{owner}" for owner, lanes in held.items() for lane in lanes}
            if len(wanted) != self.lanes:
                return False
            replies = app.control.ping(timeout=0.5)
            answered = {name for reply in replies for name in reply}
            return wanted <= answered

        self.wait_lanes(every_lane_answers, "every lane held and its worker answering", timeout)

    # --- work ---------------------------------------------------------------------
    def cycle_all(self) -> list[uuid.UUID]:
        """One batch: ``cycle`` on every node of the fleet (one transaction, then
        the releases published, as ``POST /v1/batches`` does)."""
        names = tuple(row["name"] for row in self.stack.fleet.manifest)
        with session_scope() as session:
            created = create_batch(session, BatchSpec(Action.CYCLE, nodes=names), actor="test")
            ids = [member.request_id for member in created.members]
            releases = created.releases
        dispatch_releases(releases)
        return ids

    def running(self, ids: list[uuid.UUID]) -> int:
        """How many of ``ids`` are running now."""
        with get_engine().connect() as conn:
            return int(conn.execute(_RUNNING, {"ids": ids}).scalar_one())

    def wait_running(self, ids: list[uuid.UUID], at_least: int, timeout: float = 60.0) -> int:
        """Until ``at_least`` of ``ids`` are running (the fault must hit work in flight)."""
        deadline = time.monotonic() + timeout
        while (count := self.running(ids)) < at_least:
            assert time.monotonic() < deadline, f"only {count} requests running"
            time.sleep(0.05)
        return count

    # --- verdicts -----------------------------------------------------------------
    def assert_all_succeeded(self, ids: list[uuid.UUID], timeout: float) -> None:
        finished = self.stack.wait_finished(ids, timeout=timeout)
        failed = [
            (r.id, r.status, r.error)
            for r in finished.values()
            if r.status != RequestStatus.SUCCEEDED
        ]
        assert not failed, f"{len(failed)} not succeeded: {failed[:5]}"

    def assert_bmcs_cycled_once(self) -> None:
        """No overlap at any BMC, and each executed exactly one power-down then one
        power-up (from its own command log, not from what powerq recorded)."""
        overlaps = self.stack.fleet.control.overlaps()
        assert overlaps["total"] == 0, overlaps
        wrong = {}
        for row in self.stack.fleet.manifest:
            executed = [
                entry["action"]
                for entry in self.stack.fleet.control.log(row["name"])
                if entry["command"] == "chassis_control"
                and entry["action"] in POWER_CHANGING
                and entry["completion_code"] == 0
            ]
            if executed != ONE_CYCLE:
                wrong[row["name"]] = executed
        assert not wrong, (
            f"{len(wrong)} BMCs did not execute exactly one cycle: {list(wrong.items())[:5]}"
        )

    def assert_journal_clean(self) -> list[journal.Run]:
        """No lane run by two processes at once; fences per lane only go up, in
        the journal (by run start) and in every lease snapshot taken."""
        runs = journal.read(self.journal_dir)
        assert runs, "nothing journalled: is POWERQ_STEP_JOURNAL reaching the lane workers?"
        overlapping = journal.overlaps(runs)
        assert not overlapping, overlapping[:5]
        by_lane: dict[int, list[journal.Run]] = {}
        for run in runs:
            by_lane.setdefault(run.lane, []).append(run)
        for lane, lane_runs in by_lane.items():
            fences = [run.fence for run in sorted(lane_runs, key=lambda run: run.start)]
            assert fences == sorted(fences), (lane, fences)
        for lane, fences in self.seen.items():
            assert fences == sorted(set(fences)), (lane, fences)
        return runs


@pytest.fixture
def agent_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: None
) -> Iterator[Callable[..., AgentStack]]:
    """Build ``agent_stack(nodes=…, lanes=…, agents=…, transition=…)``: fleet (every
    machine on), nodes registered, control worker with beat, ``agents`` agents
    started and every lane consuming."""
    built: list[tuple[AgentStack, object]] = []

    def build(nodes: int, lanes: int, agents: int = 3, transition: float = 1.0) -> AgentStack:
        phases: dict[str, float] = {}
        mark = time.monotonic()

        def phase(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            phases[name] = round(now - mark, 1)
            mark = now

        journal_dir = tmp_path / "journal"
        journal_dir.mkdir()
        redis_server = ThrowawayRedis(tmp_path / "redis")
        redis_server.start()
        env = {
            "POWERQ_LANES": str(lanes),
            "POWERQ_LANE_LEASE_S": str(LEASE_S),
            "POWERQ_SWEEP_INTERVAL_S": str(SWEEP_S),
            "POWERQ_STEP_JOURNAL": str(journal_dir),
            # the monitor's refreshes would only compete with the batch here
            "POWERQ_MONITOR_INTERVAL_S": "3600",
            "PYTHONFAULTHANDLER": "1",  # see AgentStack.dump_agents
        }
        environment = _environment(monkeypatch, redis_server.url, None, env)
        environment.__enter__()
        _publishable(lanes)
        with get_engine().begin() as conn:
            conn.execute(text("TRUNCATE lane_leases, agents"))
        fleet = SimFleetProcess(count=nodes, transition=transition, soft_delay=2.0)
        fleet.start()
        stack = FaultStack(fleet, tmp_path, redis_server, None)
        s = AgentStack(stack, lanes, journal_dir, setup=phases)
        built.append((s, environment))
        phase("fleet")
        _power_all_on(fleet)
        phase("power on")
        _register(fleet)
        phase("register")
        stack.processes.python("control", "powerq.cli", "worker", "--control", "--beat")
        for number in range(1, agents + 1):
            s.start_agent(f"a{number}")
        s.wait_lanes(s.placed(set(s.agents)), "lanes shared out", 60)
        s.wait_all_consuming()
        phase("agents")
        return s

    yield build
    for s, environment in built:
        s.stack.processes.signal_all()  # every agent stops its workers at once, not in turn
        s.stack.stop()
        s.stack.fleet.stop()
        environment.__exit__(None, None, None)  # type: ignore[attr-defined]
        s.stack.redis.kill()


def _publishable(lanes: int) -> None:
    """Let this process publish to lanes beyond the suite's POWERQ_LANES=2
    (celeryconfig listed the queues once, when it was imported)."""
    for lane in range(lanes):
        app.amqp.queues.add(Queue(lane_queue(lane)))


def _register(fleet: SimFleetProcess) -> None:
    """Every BMC of the fleet as a node, in one set-based import (node by node
    costs ~35 ms each here)."""
    rows = [
        (
            number,
            NodeSpec(
                r["name"], DriverKind.IPMI, r["address"], r["port"], r["username"], r["password"]
            ),
        )
        for number, r in enumerate(fleet.manifest, 1)
    ]
    with session_scope() as session:
        outcomes = import_nodes(session, rows, update=False, actor="test")
    assert all(outcome.outcome == "created" for outcome in outcomes), outcomes[:3]


def _power_all_on(fleet: SimFleetProcess) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda row: fleet.control.set_power(row["name"], "on"), fleet.manifest))
    fleet.control.reset_logs()


def _gone(processes: list[psutil.Process]) -> bool:
    """Whether every one has exited (a zombie whose parent is frozen has, too)."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.status() != psutil.STATUS_ZOMBIE:
                return False
    return True


def test_sigkill_one_of_three_agents_mid_batch(agent_stack: Callable[..., AgentStack]) -> None:
    started = time.monotonic()
    s = agent_stack(nodes=KILL_NODES, lanes=24)
    ids = s.cycle_all()
    s.wait_running(ids, at_least=min(100, len(ids)))

    victim = "a2"
    lanes_of_victim = s.held_by()[victim]
    fences_before = {lane: s.leases()[lane].fence for lane in lanes_of_victim}
    workers = s.workers(victim)
    assert lanes_of_victim and len(workers) == len(lanes_of_victim)
    running_at_kill = s.running(ids)
    killed = time.monotonic()
    os.kill(s.pid(victim), signal.SIGKILL)  # the agent only: its workers get SIGTERM (pdeathsig)

    survivors_hold = s.placed({"a1", "a3"})
    workers_gone_s: float | None = None
    takeover_s: float | None = None
    while takeover_s is None:
        now = time.monotonic() - killed
        assert now < TAKEOVER_BOUND_S, f"no takeover within {TAKEOVER_BOUND_S:.0f} s: {s.held_by()}"
        if workers_gone_s is None and _gone(workers):
            workers_gone_s = now
        leases = s.leases()
        if any(leases[lane].fence > fences_before[lane] for lane in lanes_of_victim):
            # the first lane taken over: the old workers must all have stopped by now
            assert workers_gone_s is not None, "a lane was taken while its old worker ran"
        if survivors_hold(s.held_by()):
            takeover_s = now
        time.sleep(0.05)
    for lane in lanes_of_victim:
        assert s.leases()[lane].fence > fences_before[lane]
    assert set(s.held_by()) == {"a1", "a3"}

    s.assert_all_succeeded(ids, timeout=180)
    done_s = time.monotonic() - killed
    s.assert_bmcs_cycled_once()
    runs = s.assert_journal_clean()
    print(
        f"\n{len(ids)} cycles, {running_at_kill} running at the kill of {victim} "
        f"({len(lanes_of_victim)} lanes); its workers gone {workers_gone_s:.1f} s and its lanes "
        f"held by a1/a3 {takeover_s:.1f} s after it; batch done {done_s:.1f} s after it; "
        f"{len(runs)} runs journalled; set-up {s.setup}, test {time.monotonic() - started:.0f} s"
    )


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
    while not _gone(workers):
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
