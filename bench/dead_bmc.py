"""Benchmark 8: what one dead BMC costs the other nodes of its lane.

One lane worker (as shipped) and ``--live`` simulated BMCs, all on that one
lane. Each round powers every live machine off (or on) at once and measures,
per request, PostgreSQL's ``finished_at - created_at``. Rounds alternate
between a clean lane (baseline) and the same lane with one more node whose
BMC is down and that has its own request outstanding, submitted first, so
every step the executor spends on the dead BMC stands in front of live work.

Two figures: the live requests' latency with and without the dead BMC in
front of them (information), and the lane time one step on a dead BMC costs
its neighbours (goal <= 1 s): the executor's read of the dead BMC, timed
in-process exactly as a step makes it (a fresh driver, no session: the probe,
then failure), against the same read of a live BMC.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import uuid
from typing import Any

from bench import common
from bench.common import Result, Row, median, say

GOAL_S_PER_STEP = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench dead_bmc``."""
    parser.add_argument("--live", type=int, default=20, help="live BMCs on the lane (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind (default 3)")
    parser.add_argument("--transition", type=float, default=0.3, help="BMC transition seconds")


def _submit(names: list[str], action: str) -> list[uuid.UUID]:
    """One request per node, each committed then dispatched (as the API does)."""
    from powerq.db import session_scope
    from powerq.intents import find_node, request_power
    from powerq.states import Action
    from powerq.tasks.dispatch import dispatch_request

    ids = []
    for name in names:
        with session_scope() as session:
            node = find_node(session, name)
            request_id = request_power(session, node, Action(action), actor="bench").request.id
        dispatch_request(request_id, name)
        ids.append(request_id)
    return ids


def _finished(ids: list[uuid.UUID], timeout: float) -> dict[uuid.UUID, dict[str, Any]]:
    """Wait until every request finished; their status, latency and attempts."""
    from sqlalchemy import text

    from powerq.db import session_scope

    query = text(
        "SELECT id, status, extract(epoch FROM finished_at - created_at) AS seconds,"
        " attempt, transient_errors FROM power_requests WHERE id = ANY(:ids)"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as session:
            rows = {r["id"]: dict(r) for r in session.execute(query, {"ids": ids}).mappings()}
        if all(row["seconds"] is not None for row in rows.values()):
            return rows
        time.sleep(0.1)
    raise TimeoutError(f"requests not finished within {timeout:.0f} s")


def _round(live: list[str], dead: str | None, action: str) -> tuple[list[float], int]:
    """Live latencies (s) and the dead request's steps during them."""
    dead_ids = _submit([dead], "on") if dead else []
    live_ids = _submit(live, action)
    rows = _finished(live_ids, timeout=300)
    bad = [r for r in rows.values() if r["status"] != "succeeded"]
    if bad:
        raise RuntimeError(f"live requests did not succeed: {bad[:3]}")
    steps = 0
    if dead_ids:
        dead_row = _finished(dead_ids, timeout=600)[dead_ids[0]]
        steps = int(dead_row["attempt"]) + int(dead_row["transient_errors"])
    return [float(r["seconds"]) for r in rows.values()], steps


def _step_seconds(target: Any, repeats: int = 5) -> float:
    """Median seconds of one executor read of ``target`` (fresh session each time)."""
    from powerq.bmc import close_all, driver_for
    from powerq.bmc.base import BmcError

    times = []
    for _ in range(repeats):
        close_all()
        started = time.perf_counter()
        with contextlib.suppress(BmcError):  # the dead one fails: that is what is timed
            driver_for(target).get_power_state()
        times.append(time.perf_counter() - started)
    return median(times)


def run(args: argparse.Namespace) -> Result:
    """Alternate clean and dead-BMC rounds on one lane."""
    result = Result("dead_bmc", {"live": args.live, "rounds": args.rounds})
    with (
        common.bench_services(1, redis_url=args.redis_url) as services,
        common.sim_fleet(args.live + 1, transition=args.transition) as fleet,
    ):
        names = common.register_nodes(fleet.manifest)
        dead, live = names[0], names[1:]
        fleet.control.set_fault(dead, "down")
        for name in live:
            fleet.control.set_power(name, "on")
        workers = common.LaneWorkers(services.processes, 1)
        workers.start()
        clean: list[float] = []
        dirty: list[float] = []
        steps = 0
        for i in range(args.rounds * 2):
            action = "off" if i % 2 == 0 else "on"
            with_dead = i % 4 in (1, 2)  # clean, dead, dead, clean, ...: no order bias
            latencies, dead_steps = _round(live, dead if with_dead else None, action)
            (dirty if with_dead else clean).extend(latencies)
            steps += dead_steps
            say(f"round {i}: {action} dead={with_dead} median {median(latencies):.2f} s")
        workers.stop()
        targets = dict(zip(names, fleet.targets(), strict=True))
        dead_step = _step_seconds(targets[dead])
        live_step = _step_seconds(targets[live[0]])
    extra_median = median(dirty) - median(clean)
    dead_rounds = sum(1 for i in range(args.rounds * 2) if i % 4 in (1, 2))
    steps_per_round = steps / max(dead_rounds, 1)
    result.details.update(
        clean_s=clean,
        dirty_s=dirty,
        dead_steps_per_round=steps_per_round,
        dead_step_s=dead_step,
        live_step_s=live_step,
    )
    result.add(
        Row(
            "8 dead BMC",
            f"{args.live} live nodes + 1 dead on one lane: median latency",
            "s",
            "(info)",
            "same lane without the dead BMC",
            median(clean),
            median(dirty),
            median(dirty) / median(clean),
            None,
            f"+{extra_median:.2f} s median",
        )
    )
    result.add(
        Row(
            "8 dead BMC",
            "lane time of one step on a dead BMC",
            "s",
            f"<= {GOAL_S_PER_STEP:.0f} s",
            "the same step on a live BMC (login + read)",
            live_step,
            dead_step,
            dead_step / live_step,
            dead_step <= GOAL_S_PER_STEP,
            f"dead request took {steps_per_round:.1f} steps/round until it failed",
        )
    )
    return result
