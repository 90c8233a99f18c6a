"""The agent's loop: hold lane leases, run one worker per lane held, hand lanes over.

Every tick (a fifth of the lane lease) the agent renews its heartbeat and
its leases in one statement, and then:

1. stops at once (SIGKILL) the worker of any lane whose lease it no longer
   holds (it expired: the agent was stopped or cut off for too long);
2. moves each held lane's deadline forward (:mod:`powerq.agent.deadline`);
3. works out the lanes it should run: the ``--lanes`` list, or with
   ``auto`` its share of the live agents by rendezvous hashing
   (:mod:`powerq.agent.placement`);
4. asks the worker of each lane it should give up to stop (SIGTERM: Celery
   finishes the steps in flight and puts back what it had not started) and
   gives the lease back once that worker has exited;
5. takes the lanes it should run that nobody holds, or whose lease expired,
   each under a new fence, and forks their workers;
6. starts again, with backoff, a worker that died while its lane is held.

A lane is taken only after its previous lease expired or was given back,
and its old worker stops before that (its deadline), so a lane never has
two consumers; the fence in every claim and command mark makes sure of it
even for a worker that was frozen and woke.

On SIGTERM or SIGINT the agent stops its workers, then gives every lane
back and leaves, so the other agents take its lanes at their next tick.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from sqlalchemy.exc import DBAPIError

from powerq.agent import leases, placement
from powerq.agent.deadline import MARGIN_SHARE, LaneDeadlines, clock
from powerq.agent.leases import Heartbeat, Identity
from powerq.config import Settings, get_settings
from powerq.errors import ConfigError
from powerq.supervisor import Backoff, Handle, ProcessGroup, RestartPolicy

log = logging.getLogger(__name__)
TICKS_PER_LEASE = 5
# A worker asked to stop for a rebalance gets this share of the lease, then SIGKILL.
STOP_GRACE_SHARE = 0.5
# How often the agent looks at its workers between ticks.
POLL_S = 0.2


@dataclass(frozen=True)
class AgentOptions:
    """How one agent runs: its name, its lanes (None: ``auto``), where its
    workers write logs (None: to the agent's own output) and ready files, and
    whether to wait one tick for the other agents before taking lanes."""

    name: str
    lanes: frozenset[int] | None = None
    log_dir: Path | None = None
    ready_dir: Path | None = None
    settle: bool = True
    # No earlier run of this name can be alive (powerq up holds its data dir's
    # lock): take its name and lanes at once.
    take_over: bool = False


@dataclass
class _Lane:
    """A lane this agent holds: its fence, and since when its worker was asked
    to stop (for a hand-over), if it was."""

    fence: int
    stopping_since: float | None = None
    restart_at: float | None = None
    backoff: Backoff | None = None


@dataclass
class Agent:
    """One run of ``powerq agent``."""

    options: AgentOptions
    settings: Settings = field(default_factory=get_settings)

    def __post_init__(self) -> None:
        self.me = Identity(
            name=self.options.name,
            incarnation=uuid.uuid4(),
            pid=os.getpid(),
            auto=self.options.lanes is None,
            take_over=self.options.take_over,
        )
        self.lease_s = self.settings.lane_lease_s
        self.tick_s = self.lease_s / TICKS_PER_LEASE
        # Stop consuming a lane this long before its lease could run out.
        self.margin_s = self.lease_s * MARGIN_SHARE
        self.deadlines = LaneDeadlines(self.settings.lanes)
        self.group = ProcessGroup(
            env=dict(os.environ),
            log_dir=self.options.log_dir,
            die_with_parent=True,
            inherit_output=True,
        )
        self.held: dict[int, _Lane] = {}
        self.wanted: set[int] = set()  # the lanes this agent should run, as of the last tick
        self._next_tick = 0.0
        self.policy = RestartPolicy(
            max_s=self.settings.restart_backoff_max_s,
            burst=self.settings.restart_burst,
            window_s=self.settings.restart_window_s,
        )
        self._unreachable_since: float | None = None
        self._dying: list[Handle] = []  # killed workers not yet reaped
        self.stopping = False  # set by SIGTERM/SIGINT: the loop ends at its next look

    # --- the loop ------------------------------------------------------------------
    def run(self) -> int:
        """Tick until a signal; then stop every worker and give the lanes back.
        Returns the exit code.

        :raises SystemExit: another live agent has this name (one line, exit 1).
        """
        with self._signals_stop():
            try:
                self.start()
                while not self.stopping:
                    self.poll()
                    _sleep(POLL_S)
            finally:
                self.stop()
        return 0

    def start(self) -> None:
        """Register (waiting for PostgreSQL if need be) and import what the lane
        workers run, so that they share it.

        :raises ConfigError: a ``--lanes`` list names a lane outside the configured ones.
        :raises SystemExit: another live agent has this name.
        """
        self._check_explicit_lanes()
        self._preload()  # first: once registered, it must heartbeat every tick
        self._register()

    def poll(self) -> None:
        """One look: the heartbeat tick when one is due (every fifth of the lease),
        else finish hand-overs and restart dead workers. Call every :data:`POLL_S`.

        :raises SystemExit: this agent's name was taken over by another run.
        """
        self._dying = [handle for handle in self._dying if handle.poll() is None]
        now = clock()
        if now >= self._next_tick:
            self._next_tick = now + self.tick_s
            self.tick()
        else:
            self._hand_over(self.wanted)
            self._restart_dead(now)

    def _check_explicit_lanes(self) -> None:
        lanes = self.settings.lanes
        outside = sorted(lane for lane in self.options.lanes or () if not 0 <= lane < lanes)
        if outside:
            raise ConfigError(f"lanes {outside} are outside 0 … {lanes - 1} (POWERQ_LANES={lanes})")

    def _register(self) -> None:
        """The first heartbeat; with ``settle``, one tick more so that agents
        started together see each other before any takes lanes.

        :raises SystemExit: another live agent has this name.
        """
        beat = self._heartbeat_or_none(clock())
        while beat is None and not self.stopping:  # no database yet: keep trying
            self._pause(self.tick_s)
            beat = self._heartbeat_or_none(clock())
        if beat is None:
            return
        if not beat.registered:
            raise SystemExit(
                f"another powerq agent named {self.me.name!r} is running; "
                "give this one a different --name"
            )
        log.info("agent %s: registered; lane lease %.0f s", self.me.name, self.lease_s)
        if self.options.settle:
            self._pause(self.tick_s)

    def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if asked to stop."""
        until = clock() + seconds
        while not self.stopping and clock() < until:
            _sleep(POLL_S)

    def _preload(self) -> None:
        """Import what lane workers run (and the drivers the nodes use) once, here,
        so that every forked worker shares those pages instead of importing them
        itself; the database pool is emptied before the first fork.

        Done before the first heartbeat: it takes seconds on a loaded host, and
        an agent silent for longer than the lease once the others have seen it
        makes them hand lanes over, take them back, and hand them over again."""
        import gc

        from powerq.tasks import worker
        from powerq.tasks.lifecycle import preload_drivers

        worker.preload("lane")
        with contextlib.suppress(DBAPIError):
            preload_drivers()
        gc.freeze()  # the collector must not write to the shared pages

    def tick(self) -> None:
        """One round: renew, drop lost lanes, hand over, take, restart.

        :raises SystemExit: this agent's name was taken over by another run
            (it was cut off for longer than the lease).
        """
        sent = clock()
        beat = self._heartbeat_or_none(sent)
        if beat is None:
            self._restart_dead(sent)
            return
        if not beat.registered:
            raise SystemExit(f"agent {self.me.name!r} was replaced by another run of that name")
        self._drop_lost(beat)
        for lane in beat.held:
            self.deadlines.set(lane, sent + self.lease_s - self.margin_s)
        self.wanted = self._wanted(beat)
        self._hand_over(self.wanted)
        self._take(self.wanted, sent)
        self._restart_dead(clock())

    def _heartbeat_or_none(self, sent: float) -> Heartbeat | None:
        try:
            beat = leases.heartbeat(self.me, self.lease_s, held=self.held)
        except DBAPIError as exc:
            if self._unreachable_since is None:
                self._unreachable_since = sent
                log.warning(
                    "agent %s: cannot reach PostgreSQL (%s); its lanes stop within %.0f s "
                    "unless it answers",
                    self.me.name,
                    type(exc.orig).__name__,
                    self.lease_s - self.margin_s,
                )
            return None
        if self._unreachable_since is not None:
            log.warning("agent %s: PostgreSQL answers again", self.me.name)
            self._unreachable_since = None
        return beat

    # --- the steps -----------------------------------------------------------------
    def _drop_lost(self, beat: Heartbeat) -> None:
        """Kill the worker of every lane whose lease this run no longer holds."""
        for lane in [lane for lane in self.held if lane not in beat.held]:
            log.warning("agent %s: lost the lease of lane %d; its worker stops", self.me.name, lane)
            self.deadlines.withdraw(lane)
            self._kill(lane)
            del self.held[lane]

    def _wanted(self, beat: Heartbeat) -> set[int]:
        if self.options.lanes is not None:
            return set(self.options.lanes)
        return placement.lanes_of(self.me.name, beat.members, self.settings.lanes)

    def _hand_over(self, wanted: set[int]) -> None:
        """Ask the workers of lanes no longer wanted to stop; give back the lanes
        whose workers have stopped; SIGKILL those that take too long."""
        now = clock()
        done = []
        for lane, held in self.held.items():
            if lane in wanted and held.stopping_since is None:
                continue
            if held.stopping_since is None:
                held.stopping_since = now
                self._signal(lane, signal.SIGTERM)
                log.info("agent %s: handing lane %d over", self.me.name, lane)
            elif not self._alive(lane):
                done.append(lane)
            elif now - held.stopping_since > self.lease_s * STOP_GRACE_SHARE:
                self._kill(lane)
                done.append(lane)
        if done:
            for lane in done:
                self.deadlines.withdraw(lane)
                self.group.children.pop(_child(lane), None)
                del self.held[lane]
            with contextlib.suppress(DBAPIError):  # else they simply expire
                leases.release(self.me, done)

    def _take(self, wanted: set[int], sent: float) -> None:
        free = sorted(wanted - set(self.held))
        if not free:
            return
        try:
            taken = leases.acquire(self.me, free, self.lease_s)
        except DBAPIError:
            return
        for lane, fence in sorted(taken.items()):
            self.deadlines.set(lane, sent + self.lease_s - self.margin_s)
            try:
                self._fork_worker(lane, fence)
            except OSError as exc:  # no process to be had (pid or memory limits)
                log.error("agent %s: cannot start lane %d's worker: %s", self.me.name, lane, exc)
                self.deadlines.withdraw(lane)
                with contextlib.suppress(DBAPIError):  # else it simply expires
                    leases.release(self.me, [lane])
                continue
            self.held[lane] = _Lane(fence)
            log.info("agent %s: took lane %d (fence %d)", self.me.name, lane, fence)

    def _restart_dead(self, now: float) -> None:
        """Start again, after its backoff, the worker of a lane still held whose
        deadline has not passed."""
        for lane, held in self.held.items():
            if held.stopping_since is not None or self._alive(lane):
                continue
            if held.restart_at is None:
                held.backoff = held.backoff or Backoff(self.policy, now)
                child = self.group.children[_child(lane)]
                ran_s = time.monotonic() - child.started  # the supervisor's clock
                delay = held.backoff.delay(ran_s, now)
                held.restart_at = now + delay
                log.warning(
                    "%s exited (%s); restarting in %.1f s",
                    child.name,
                    child.process.returncode,
                    delay,
                )
            elif now >= held.restart_at and self.deadlines.left_s(lane) > 0:
                held.restart_at = None
                self._restart(lane, held)

    def _restart(self, lane: int, held: _Lane) -> None:
        """Start lane ``lane``'s worker again, under a fence of its own."""
        try:
            fence = leases.refence(self.me, lane)
        except DBAPIError:
            held.restart_at = clock() + self.tick_s  # try again later
            return
        if fence is None:  # lost meanwhile: the next tick drops it
            return
        held.fence = fence
        self._fork_worker(lane, fence)

    # --- workers -------------------------------------------------------------------
    def _fork_worker(self, lane: int, fence: int) -> None:
        from powerq.tasks import worker

        args = worker.parse(["lane", str(lane), "--hostname", f"lane{lane}@{self.me.name}"])
        lease = worker.LaneLease(fence, self.deadlines)
        ready_dir = self.options.ready_dir
        ready = None if ready_dir is None else ready_dir / f"lane{lane}.ready"
        if ready is not None:
            ready.unlink(missing_ok=True)

        # The agent's pooled connections are forgotten in the child (powerq.db's
        # at-fork hook), never shared.
        self.group.children.pop(_child(lane), None)
        self.group.fork(_child(lane), lambda: worker.serve(args, ready, lease))

    def _alive(self, lane: int) -> bool:
        child = self.group.children.get(_child(lane))
        return child is not None and child.alive

    def _signal(self, lane: int, sig: signal.Signals) -> None:
        child = self.group.children.get(_child(lane))
        if child is not None and child.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, sig)

    def _kill(self, lane: int) -> None:
        """SIGKILL lane ``lane``'s worker without waiting: it is reaped later, and
        meanwhile this loop goes on renewing the other lanes."""
        self._signal(lane, signal.SIGKILL)
        child = self.group.children.pop(_child(lane), None)
        if child is not None:
            self._dying.append(child.process)

    def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after the grace), then give
        every lane back and leave the agents' list (never raises for a lost
        database: the leases then simply expire)."""
        self.group.signal_all()
        grace = clock() + self.lease_s * STOP_GRACE_SHARE
        while any(child.alive for child in self.group.children.values()):
            if clock() > grace:
                break
            time.sleep(0.05)
        self.group.stop_all(timeout=0)
        for handle in self._dying:
            with contextlib.suppress(subprocess.TimeoutExpired):
                handle.wait(5)
        for lane in list(self.held):
            self.deadlines.withdraw(lane)
        with contextlib.suppress(DBAPIError):
            leases.leave(self.me)

    @contextlib.contextmanager
    def _signals_stop(self) -> Iterator[None]:
        """SIGTERM and SIGINT set :attr:`stopping` (the loop ends at its next look,
        never in the middle of a statement or a fork); SIGHUP too."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.stopping = True

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, handler) for sig in signals}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def _child(lane: int) -> str:
    return f"lane{lane}"


def default_name() -> str:
    """This host's name, the default agent name (one agent per host)."""
    return socket.gethostname()


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def main(options: AgentOptions) -> int:
    """Run an agent with ``options`` until SIGTERM or SIGINT; its exit code."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    return Agent(options).run()
