"""Three ``powerq agent`` processes, the control worker with beat, the simulated
IPMI fleet and a throwaway Redis, for the agent failover tests
(``test_failover.py``, ``test_partition.py``)."""

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
        _publishable(lanes)  # lane_leases and agents are emptied by the db fixture
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


def all_gone(processes: list[psutil.Process]) -> bool:
    """Whether every one has exited (a zombie whose parent is frozen has, too)."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.status() != psutil.STATUS_ZOMBIE:
                return False
    return True
