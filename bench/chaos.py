"""A bounded, randomised mix of every outage while requests keep coming.

    python -m bench.chaos --requests 2000 --nodes 100 --lanes 4 --time-limit 900

Runs real lane workers, the control worker and beat (as subprocesses) against
a simulated IPMI fleet, a throwaway Redis and a throwaway embedded PostgreSQL.
While requests are submitted (each node gets its next random action as soon
as its previous one finished), a fault is injected every few seconds: Redis
FLUSHALL, Redis killed and restarted, PostgreSQL restarted, a lane worker
SIGKILLed, beat stopped for a while, a BMC down or lossy for a while. After
the last request has been submitted every fault is healed and the run drains.

It prints ``requests=N lost=L overlaps=O repeated=R stuck=S`` and exits
non-zero unless all four are 0:

* lost: requests that never finished (pending/running at the end);
* overlaps: power operations that reached a BMC while another was in transition;
* repeated: power commands a BMC executed beyond what its requests allow
  (cycle: off + on; soft_off: soft + one hard fallback; others: one), counted
  in the BMC's own log. A quarter of the BMCs (``--careless-share``) answer
  Chassis Control in 0.8 s and execute every retransmission they receive;
* stuck: outstanding requests past their deadline (plus a grace period).

Failed requests are allowed (a BMC that is down fails its request); losing
one is not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from powerq.bmc.simfleet.executions import beyond_budget

ACTIONS = ["on", "off", "cycle", "reset", "soft_off", "off", "on"]
FAULTS = [
    "flushall",
    "redis_restart",
    "pg_restart",
    "kill_worker",
    "beat_pause",
    "bmc_down",
    "bmc_lossy",
]
FAULT_EVERY_S = (3.0, 8.0)
CARELESS_ANSWER_S = 0.8  # longer than pyghmi's 0.5-1 s retransmission timer
DRAIN_S = 240.0
RESULTS = Path(__file__).parent / "results"


@dataclass
class Verdict:
    """The run's outcome."""

    requests: int
    lost: int
    overlaps: int
    repeated: int
    stuck: int
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    overlap_details: list[dict[str, Any]] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """No request lost, no overlap, nothing repeated, nothing stuck."""
        return not (self.lost or self.overlaps or self.repeated or self.stuck)

    def line(self) -> str:
        """The one-line summary."""
        return (
            f"requests={self.requests} lost={self.lost} overlaps={self.overlaps} "
            f"repeated={self.repeated} stuck={self.stuck}"
        )


def main() -> int:
    """Parse arguments, run, print the verdict line; exit 0 only when clean."""
    args = _parse()
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="powerq-chaos-"))
    _configure_environment(workdir, args)
    verdict = Chaos(args, workdir, rng).run()
    print(f"statuses={verdict.statuses} faults={verdict.faults} seconds={verdict.seconds:.0f}")
    for error, count in verdict.errors.items():
        print(f"  {count:4d} x {error}")
    for detail in verdict.overlap_details:
        print(f"overlap on {detail['bmc']}: {detail['entries']}")
    print(verdict.line())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chaos.json").write_text(json.dumps(verdict.__dict__, indent=2) + "\n")
    return 0 if verdict.clean else 1


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="powerq chaos run (bounded)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--transition", type=float, default=0.5)
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds, hard stop")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--careless-share",
        type=float,
        default=0.25,
        help="share of BMCs that answer slowly and execute retransmissions (0..1)",
    )
    return parser.parse_args()


def _configure_environment(workdir: Path, args: argparse.Namespace) -> None:
    os.environ.update(
        POWERQ_LANES=str(args.lanes),
        POWERQ_DATA_DIR=str(workdir / "data"),
        POWERQ_SECRET_KEY=Fernet.generate_key().decode(),
        POWERQ_SWEEP_INTERVAL_S="1",
        POWERQ_REDISPATCH_AFTER_S="3",
        POWERQ_MONITOR_INTERVAL_S="5",
        POWERQ_FAULT_RECHECK_S="5",
    )


class Chaos:
    """One chaos run: services, stack, load, faults, drain, verdict."""

    def __init__(self, args: argparse.Namespace, workdir: Path, rng: random.Random) -> None:
        self.args = args
        self.workdir = workdir
        self.rng = rng
        self.submitted: list[uuid.UUID] = []
        self.faults: Counter[str] = Counter()
        self.healing: list[tuple[float, Any]] = []

    def run(self) -> Verdict:
        """Everything, bounded by ``--time-limit``; all processes are stopped at the end."""
        from powerq.bmc.simfleet.launcher import SimFleetProcess
        from tests.faults.services import ThrowawayPostgres, ThrowawayRedis

        started = time.monotonic()
        self.redis = ThrowawayRedis(self.workdir / "redis")
        self.postgres = ThrowawayPostgres(self.workdir / "pg")
        self.redis.start()
        database_url = self.postgres.start()
        os.environ.update(POWERQ_BROKER_URL=self.redis.url, POWERQ_DATABASE_URL=database_url)
        from powerq.migrate import upgrade

        upgrade(database_url)
        fleet = SimFleetProcess(count=self.args.nodes, transition=self.args.transition)
        with fleet:
            self.stack = _stack(fleet, self.workdir)
            self._make_careless()
            try:
                self._load_with_faults(started)
                self._heal_all()
                self._drain(started)
                verdict = self._verdict(fleet)
            finally:
                self.stack.stop()
                self.redis.kill()
                self.postgres.stop()
        verdict.seconds = time.monotonic() - started
        return verdict

    def _load_with_faults(self, started: float) -> None:
        next_fault = time.monotonic() + self.rng.uniform(*FAULT_EVERY_S)
        names = [row["name"] for row in self.stack.fleet.manifest]
        while len(self.submitted) < self.args.requests and not self._out_of_time(started):
            self._submit_to_idle(names)
            self._heal_due()
            if time.monotonic() >= next_fault:
                self._inject(self.rng.choice(FAULTS))
                next_fault = time.monotonic() + self.rng.uniform(*FAULT_EVERY_S)
            time.sleep(0.2)

    def _submit_to_idle(self, names: list[str]) -> None:
        from powerq.errors import PowerqError
        from powerq.states import Action

        idle = _idle_nodes(names)
        self.rng.shuffle(idle)
        for name in idle[: self.args.requests - len(self.submitted)]:
            action = Action(self.rng.choice(ACTIONS))
            options: dict[str, Any] = {"deadline_s": 60}
            if action is Action.SOFT_OFF:
                options["soft_fallback"] = True
                # Longer than the sim's ACPI shutdown (5 s): the hard-off fallback
                # is for an OS that ignores the request, not one still obeying it.
                options["deadline_s"] = 10
            try:
                self.submitted.append(self.stack.submit(name, action, **options))
            except PowerqError:
                continue  # a conflict with a monitor correction: that node is busy
            except Exception:  # database restarting: try again next round
                return

    def _inject(self, fault: str) -> None:
        """Inject one fault now; schedule its healing where it needs one."""
        self.faults[fault] += 1
        now = time.monotonic()
        if fault == "flushall":
            _quietly(self.redis.flushall)
        elif fault == "redis_restart":
            self.redis.kill()
            self.healing.append((now + self.rng.uniform(1, 4), self.redis.start))
        elif fault == "pg_restart":
            self.postgres.stop()
            self.healing.append((now + self.rng.uniform(1, 4), self.postgres.start))
        elif fault == "kill_worker":
            lane = self.rng.randrange(self.args.lanes)
            self.stack.processes.kill(f"lane{lane}", signal.SIGKILL)
            self.healing.append((now + 1, lambda: self.stack.start_worker(lane, wait=False)))
        elif fault == "beat_pause":
            self.stack.processes.stop("beat")
            self.healing.append((now + self.rng.uniform(5, 20), self.stack.start_beat))
        else:
            self._bmc_fault(fault, now)

    def _bmc_fault(self, fault: str, now: float) -> None:
        name = self.rng.choice(self.stack.fleet.manifest)["name"]
        control = self.stack.fleet.control
        kind = "down" if fault == "bmc_down" else "lossy"
        if kind == "down":
            control.set_fault(name, "down")
        else:
            control.set_fault(name, "lossy", fraction=0.3)
        heal_at = now + self.rng.uniform(3, 15)
        self.healing.append((heal_at, lambda: control.clear_fault(name, kind)))

    def _make_careless(self) -> None:
        """A share of the BMCs answer Chassis Control slowly and run every copy they
        receive (retransmissions included) for the whole run: the awkward BMC that
        made other IPMI clients power machines twice."""
        control = self.stack.fleet.control
        rows = self.stack.fleet.manifest
        for row in self.rng.sample(rows, round(len(rows) * self.args.careless_share)):
            control.set_fault(row["name"], "executes_retransmissions")
            control.set_fault(row["name"], "slow", delay=CARELESS_ANSWER_S)

    def _heal_due(self) -> None:
        now = time.monotonic()
        due = [(t, heal) for t, heal in self.healing if t <= now]
        self.healing = [(t, heal) for t, heal in self.healing if t > now]
        for _, heal in due:
            _quietly(heal)

    def _heal_all(self) -> None:
        for _, heal in self.healing:
            _quietly(heal)
        self.healing = []

    def _out_of_time(self, started: float) -> bool:
        return time.monotonic() - started > self.args.time_limit - DRAIN_S

    def _drain(self, started: float) -> None:
        limit = max(30.0, self.args.time_limit - (time.monotonic() - started))
        deadline = time.monotonic() + min(DRAIN_S, limit)
        while time.monotonic() < deadline and _outstanding(self.submitted):
            time.sleep(1.0)

    def _verdict(self, fleet: Any) -> Verdict:
        rows = _requests(self.submitted)
        statuses = Counter(r["status"] for r in rows)
        outstanding = [r for r in rows if r["status"] in ("pending", "running")]
        stuck = [r for r in outstanding if r["overdue"]]
        return Verdict(
            requests=len(rows),
            lost=len(outstanding),
            overlaps=int(fleet.control.overlaps()["total"]),
            overlap_details=_overlap_details(fleet),
            repeated=_repeated(fleet, rows),
            stuck=len(stuck),
            statuses=dict(statuses),
            errors=dict(Counter(r["error"] for r in rows if r["error"]).most_common(8)),
            faults=dict(self.faults),
        )


def _stack(fleet: Any, workdir: Path) -> Any:
    from tests.stack import Stack

    for row in fleet.manifest:
        fleet.control.set_power(row["name"], "on")
    fleet.control.reset_logs()
    stack = Stack(fleet, workdir / "logs")
    stack.register_fleet()
    stack.start_workers()
    stack.start_scheduler()
    return stack


def _quietly(action: Any) -> None:
    try:
        action()
    except Exception as exc:  # a fault while another is active: note it, go on
        print(f"chaos: {exc}", file=sys.stderr)


def _idle_nodes(names: list[str]) -> list[str]:
    from sqlalchemy import select

    from powerq.db import session_scope
    from powerq.models import Node, PowerRequest
    from powerq.states import OUTSTANDING_STATUSES

    try:
        with session_scope() as session:
            busy = set(
                session.scalars(
                    select(Node.name)
                    .join(PowerRequest, PowerRequest.node_id == Node.id)
                    .where(PowerRequest.status.in_(OUTSTANDING_STATUSES))
                ).all()
            )
    except Exception:  # PostgreSQL is being restarted
        return []
    return [name for name in names if name not in busy]


def _outstanding(ids: list[uuid.UUID]) -> bool:
    try:
        return any(r["status"] in ("pending", "running") for r in _requests(ids))
    except Exception:
        return True


def _requests(ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    from sqlalchemy import func, select

    from powerq.db import session_scope
    from powerq.models import Node, PowerRequest

    grace = 120
    with session_scope() as session:
        now = session.scalar(select(func.now()))
        rows = session.execute(
            select(PowerRequest, Node.name)
            .join(Node, Node.id == PowerRequest.node_id)
            .where(PowerRequest.id.in_(ids))
        ).all()
        return [
            {
                "status": request.status.value,
                "action": request.action.value,
                "node": name,
                "sent": request.command_sent_at is not None,
                "error": (request.error or "")[:90],
                "overdue": request.deadline_at is not None
                and (now - request.deadline_at).total_seconds() > grace,
            }
            for request, name in rows
        ]


def _overlap_details(fleet: Any) -> list[dict[str, Any]]:
    """The log entries around each overlap, to say what collided."""
    details = []
    for name in fleet.control.overlaps()["per_bmc"]:
        log = fleet.control.log(name)
        for i, entry in enumerate(log):
            if entry["overlapped"]:
                details.append({"bmc": name, "entries": log[max(0, i - 6) : i + 1]})
    return details


def _repeated(fleet: Any, rows: list[dict[str, Any]]) -> int:
    """Commands the BMCs executed beyond what their requests allow (cycle: off + on;
    soft_off: soft + one hard fallback; others: one), counted in each BMC's own log."""
    actions: dict[str, list[str]] = {}
    for r in rows:
        actions.setdefault(r["node"], []).append(r["action"])
    return sum(
        beyond_budget(fleet.control.log(row["name"]), actions.get(row["name"], []))
        for row in fleet.manifest
    )


if __name__ == "__main__":
    sys.exit(main())
