"""Benchmark 9: how long work waits after a worker dies or a message is lost.

One lane worker, the control worker and beat, as shipped (sweep every 5 s).
Each repetition measures, on a fresh request:

* **dead worker**: a power cycle (transition ``--transition`` s) is marked as
  sent, its lane worker is SIGKILLed and started again at once. The figure is
  the time from the kill until the request is claimed again (its ``attempt``
  grows): the new worker resumes what its predecessor held as soon as it is up.
* **lost message**: a request is dispatched while its lane has no worker, the
  broker is flushed (the message is gone), the worker is started. The figure
  is the time from the flush until the request is claimed: the sweeper must
  find it in PostgreSQL and ring the lane again.

The baseline of both is the worker's own start time (from Popen to its first
ping answer), measured in the same run: nothing can resume before that.
Goal (from the issue): both within 15 s.
"""

from __future__ import annotations

import argparse
import signal
import time
import uuid
from typing import Any

from bench import common
from bench.common import Result, Row, median, say

GOAL_S = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench recovery``."""
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each (default 3)")
    parser.add_argument("--transition", type=float, default=3.0, help="BMC transition seconds")


def _submit(name: str, action: str) -> uuid.UUID:
    from powerq.db import session_scope
    from powerq.intents import find_node, request_power
    from powerq.states import Action
    from powerq.tasks.dispatch import dispatch_request

    with session_scope() as session:
        request_id = request_power(
            session, find_node(session, name), Action(action), actor="bench"
        ).request.id
    dispatch_request(request_id, name)
    return request_id


def _row(request_id: uuid.UUID) -> dict[str, Any]:
    from sqlalchemy import text

    from powerq.db import session_scope

    with session_scope() as session:
        query = text(
            "SELECT status, attempt, command_sent_at IS NOT NULL AS sent"
            " FROM power_requests WHERE id = :id"
        )
        return dict(session.execute(query, {"id": request_id}).mappings().one())


def _start_worker(workers: common.LaneWorkers) -> float:
    """Start lane 0's worker; seconds until it answers a ping."""
    return workers.start(timeout=120)


def _dead_worker(workers: common.LaneWorkers, group: Any, name: str) -> tuple[float, float]:
    request_id = _submit(name, "cycle")
    common.wait_until(lambda: _row(request_id)["sent"], 60, "the cycle to be marked sent", 0.02)
    attempt = _row(request_id)["attempt"]
    killed = time.monotonic()
    group.kill("lane0", signal.SIGKILL)
    start_s = _start_worker(workers)
    common.wait_until(
        lambda: _row(request_id)["attempt"] > attempt, 120, "the request to be claimed again", 0.05
    )
    resumed = time.monotonic() - killed
    common.wait_until(lambda: _row(request_id)["status"] == "succeeded", 120, "the cycle", 0.1)
    return resumed, start_s


def _lost_message(workers: common.LaneWorkers, group: Any, name: str) -> tuple[float, float]:
    group.stop("lane0", timeout=10)
    request_id = _submit(name, "off")
    flushed = time.monotonic()
    common.flush_broker()
    start_s = _start_worker(workers)
    common.wait_until(lambda: _row(request_id)["attempt"] > 0, 120, "the request's claim", 0.05)
    resumed = time.monotonic() - flushed
    common.wait_until(lambda: _row(request_id)["status"] == "succeeded", 120, "the off", 0.1)
    return resumed, start_s


def run(args: argparse.Namespace) -> Result:
    """Alternate both faults on a one-lane stack."""
    result = Result("recovery", {"repeats": args.repeats, "transition_s": args.transition})
    with (
        common.bench_services(1, redis_url=args.redis_url) as services,
        common.sim_fleet(2, transition=args.transition) as fleet,
    ):
        names = common.register_nodes(fleet.manifest)
        for name in names:
            fleet.control.set_power(name, "on")
        group = services.processes
        common.start_control_and_beat(group)
        workers = common.LaneWorkers(group, 1)
        workers.start()
        dead: list[tuple[float, float]] = []
        lost: list[tuple[float, float]] = []
        for i in range(args.repeats):
            fleet.control.set_power(names[0], "on")
            dead.append(_dead_worker(workers, group, names[0]))
            fleet.control.set_power(names[1], "on")
            lost.append(_lost_message(workers, group, names[1]))
            say(f"round {i}: dead worker {dead[-1][0]:.1f} s, lost message {lost[-1][0]:.1f} s")
        workers.stop()
    for label, samples in (("dead worker: kill -> claimed again", dead),
                           ("lost message: flush -> claimed", lost)):  # fmt: skip
        waits = [wait for wait, _ in samples]
        starts = [start for _, start in samples]
        result.add(
            Row(
                "9 recovery",
                label,
                "s",
                f"<= {GOAL_S:.0f} s",
                "lane worker start (Popen -> ping)",
                median(starts),
                median(waits),
                median(waits) / median(starts),
                max(waits) <= GOAL_S,
                f"worst {max(waits):.1f} s of {len(waits)}",
            )
        )
    result.details.update(dead_worker_s=dead, lost_message_s=lost)
    return result
