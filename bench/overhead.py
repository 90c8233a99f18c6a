"""Benchmark 2: single action latency, POST to ``succeeded`` against a tight poll loop.

Ten nodes, one lane worker (``powerq worker --lane 0``, as shipped) and the API
(gunicorn as shipped). Each round alternates off/on and runs, back to back on
the same BMCs (transition ``--transition`` s):

* powerq, one node: ``POST /v1/nodes/{name}/power``, then the request's
  ``finished_at`` (PostgreSQL's clock, same host) minus the client's time just
  before the POST;
* powerq, ten nodes: ten POSTs at once, until the last one finished;
* raw, tight poll: in this process, a warm pyghmi session (powerq's driver
  without any queue or database): read the state, send the command, then read
  every 20 ms until the target. This is the hardware's transition plus the
  least any verifying tool can add.

The first rounds are a warm-up: powerq learns each node's transition time
from its verified transitions (docs/design.md, "Check schedule").
The request's timestamps give a breakdown of where powerq's time goes.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import common
from bench.common import Result, Row, median, percentile, say

GOAL_RATIO = 1.15  # one node, against the tight poll
GOAL_TEN_RATIO = 1.3  # ten nodes at once, against one node
NODES = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench overhead``."""
    parser.add_argument("--repeats", type=int, default=30, help="actions per variant (default 30)")
    parser.add_argument(
        "--transition", type=float, default=0.3, help="BMC transition seconds (default 0.3)"
    )


def raw_action(driver: Any, action: Any, target: Any) -> float:
    """Query, send, verify every 20 ms through the driver alone; seconds taken."""
    from powerq.states import needs_command

    start = time.time()
    if needs_command(action, driver.get_power_state()):
        driver.send_power_action(action)
    while True:
        time.sleep(0.02)
        if driver.get_power_state() is target:
            return time.time() - start
        if time.time() - start > 60:
            raise TimeoutError("raw action not verified in 60 s")


def post_action(url: str, token: str, name: str, action: str) -> str:
    """POST the action on a new connection (an idle keep-alive one may be closed
    by the server just as it is reused); the request id."""
    import requests

    response = requests.post(
        f"{url}/v1/nodes/{name}/power",
        json={"action": action},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    if response.status_code != 202:
        raise RuntimeError(f"POST power: {response.status_code} {response.text[:300]}")
    return str(response.json()["request"]["id"])


def wait_finished(request_id: str, start: float) -> dict[str, float]:
    """Wait for ``finished_at``; the request's timeline (seconds after ``start``)."""
    from sqlalchemy import text

    from powerq.db import session_scope

    query = text(
        "SELECT status, extract(epoch FROM created_at) AS created,"
        " extract(epoch FROM dispatched_at) AS dispatched,"
        " extract(epoch FROM started_at) AS started,"
        " extract(epoch FROM command_sent_at) AS sent,"
        " extract(epoch FROM finished_at) AS finished, checks, attempt"
        " FROM power_requests WHERE id = :id"
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        with session_scope() as db:
            row = db.execute(query, {"id": request_id}).mappings().one()
        if row["finished"] is not None:
            if row["status"] != "succeeded":
                raise RuntimeError(f"request {request_id} {row['status']}")
            return {
                "total": float(row["finished"]) - start,
                "to_created": float(row["created"]) - start,
                "to_dispatched": float(row["dispatched"] or row["created"]) - start,
                "to_started": float(row["started"]) - start,
                "to_sent": float(row["sent"] or row["started"]) - start,
                "attempts": row["attempt"],
            }
        time.sleep(0.01)
    raise TimeoutError(f"request {request_id} not finished in 60 s")


def powerq_action(
    pool: ThreadPoolExecutor, url: str, token: str, names: list[str], action: str
) -> dict[str, float]:
    """POST the action to every node at once (one client per node); the timeline of
    the request that finished last, in seconds after the first POST was sent."""
    start = time.time()
    ids = list(pool.map(lambda name: post_action(url, token, name, action), names))
    timelines = [wait_finished(request_id, start) for request_id in ids]
    return max(timelines, key=lambda t: t["total"])


def run(args: argparse.Namespace) -> Result:
    """Interleave powerq and raw actions on the same BMCs."""
    result = Result("overhead", {"repeats": args.repeats, "transition_s": args.transition})
    with common.bench_services(1, redis_url=args.redis_url) as services:
        from powerq.bmc import close_all, driver_for
        from powerq.states import Action, PowerState

        with common.sim_fleet(NODES, transition=args.transition) as fleet:
            names = common.register_nodes(fleet.manifest)
            token = common.create_api_token("operator", "bench-overhead")
            url = common.start_gunicorn(services.processes, "api", "powerq.api.wsgi:app")
            workers = common.LaneWorkers(services.processes, 1)
            workers.start()
            driver = driver_for(fleet.targets()[0])
            pool = ThreadPoolExecutor(NODES)
            samples: dict[str, list[float]] = {"one": [], "ten": [], "tight": []}
            timelines: list[dict[str, float]] = []
            targets = {"on": (Action.ON, PowerState.ON), "off": (Action.OFF, PowerState.OFF)}
            warmup = 4  # powerq learns each node's transition time meanwhile
            # Every node is off at the start of each round: on, then off again.
            for i in range(args.repeats + warmup):
                for action in ("on", "off"):
                    undo = "off" if action == "on" else "on"
                    one = powerq_action(pool, url, token, names[:1], action)
                    raw_action(driver, *targets[undo])
                    tight = raw_action(driver, *targets[action])
                    powerq_action(pool, url, token, names, undo)
                    ten = powerq_action(pool, url, token, names, action)
                    if i >= warmup:
                        samples["one"].append(one["total"])
                        samples["tight"].append(tight)
                        samples["ten"].append(ten["total"])
                        timelines.append(one)
            pool.shutdown()
            close_all()
            workers.stop()
    ms = {k: [v * 1000 for v in vals] for k, vals in samples.items()}
    stats = {
        k: {"median_ms": median(v), "p99_ms": percentile(v, 99), "n": len(v)} for k, v in ms.items()
    }
    breakdown = {
        key: median([t[key] * 1000 for t in timelines])
        for key in ("to_created", "to_dispatched", "to_started", "to_sent", "total")
    }
    result.details.update(stats=stats, samples_ms=ms, one_node_timeline_median_ms=breakdown)
    one, tight, ten = (stats[k]["median_ms"] for k in ("one", "tight", "ten"))
    result.add(
        Row(
            "2 single action",
            "POST->verified median, 1 node",
            "ms",
            f"<= {GOAL_RATIO}x",
            "raw pyghmi, 20 ms poll",
            tight,
            one,
            one / tight,
            one / tight <= GOAL_RATIO,
            f"transition {args.transition} s",
        )
    )
    result.add(
        Row(
            "2 single action",
            "POST->all verified median, 10 nodes",
            "ms",
            f"<= {GOAL_TEN_RATIO}x",
            "powerq, 1 node",
            one,
            ten,
            ten / one,
            ten / one <= GOAL_TEN_RATIO,
            "one lane",
        )
    )
    result.add(
        Row(
            "2 single action",
            "POST->verified p99, 1 node",
            "ms",
            "(info)",
            "raw pyghmi, 20 ms poll",
            stats["tight"]["p99_ms"],
            stats["one"]["p99_ms"],
            stats["one"]["p99_ms"] / stats["tight"]["p99_ms"],
            None,
            f"p99 of {len(ms['one'])}",
        )
    )
    return result


def main(args: argparse.Namespace) -> Result:
    """Run, print, write."""
    result = run(args)
    print(common.rows_table(result.rows))
    print(
        "one node, median ms after the POST was sent:",
        {k: round(v, 1) for k, v in result.details["one_node_timeline_median_ms"].items()},
    )
    say(f"stats: {result.details['stats']}")
    result.write()
    return result
