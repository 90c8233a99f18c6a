"""Benchmark 5: refresh the observed power state of 10,000 simulated BMCs.

10,000 is what one fleet process holds here with room to spare (it opens one
UDP socket per BMC and the descriptor hard limit is 20,000; see the simfleet
README). Nodes are registered with no observation yet, L lane workers run as
shipped, and the monitor's beat task body (``powerq.tasks.monitor.monitor``)
is called back to back in this process until every node was marked once, as
a beat with a very short period would; each call marks at most 1,000 nodes
and rings their lanes with ``powerq.refresh``. Timed from the first call to
the last ``power_state_at`` written (every node must have one).

Baseline, same fleet, same parallelism: one cold read of each BMC through
powerq's IPMI driver from L threads in one process, no database or broker
(``bench/bmc_read_all.py``'s timed pass), on the first ``--baseline-sample``
BMCs (2,000) and scaled to the fleet: the pass is linear in the count.

As shipped the beat calls the monitor every ``POWERQ_MONITOR_INTERVAL_S``
(60 s) and each call takes at most 1,000 nodes, so a 10,000-node fleet is
covered in ten ticks: the JSON and BMARKS table report that bound too.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from bench import common
from bench.common import Result, Row, say

GOAL_S = 60.0
RUN_TIMEOUT_S = 420.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench monitor``."""
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--lanes", type=int, default=8, help="lane workers (default 8)")
    parser.add_argument(
        "--baseline-sample",
        type=int,
        default=2000,
        help="BMCs read by the baseline pass, scaled to the fleet (default 2000; 0: all)",
    )


def refreshed(since: float) -> dict[str, Any]:
    """How many nodes have an observation newer than ``since`` (epoch), and the newest."""
    from sqlalchemy import text

    from powerq.db import session_scope

    with session_scope() as session:
        row = (
            session.execute(
                text(
                    "SELECT count(*) FILTER (WHERE power_state_at >= to_timestamp(:t)) AS done,"
                    " count(*) FILTER (WHERE last_error IS NOT NULL) AS errors,"
                    " extract(epoch FROM max(power_state_at)) AS last FROM nodes"
                ),
                {"t": since},
            )
            .mappings()
            .one()
        )
    return dict(row)


def run(args: argparse.Namespace) -> Result:
    """Baseline pass, then the monitor through the lanes."""

    result = Result("monitor", {"nodes": args.nodes, "lanes": args.lanes})
    with common.bench_services(args.lanes, redis_url=args.redis_url) as services:
        import os

        os.environ["POWERQ_MONITOR_INTERVAL_S"] = "60"
        from powerq.config import get_settings

        get_settings.cache_clear()
        from bench.bmc_read_all import read_with_driver, timed_pass
        from powerq.bmc import close_all
        from powerq.tasks.monitor import BATCH_SIZE, monitor

        with common.sim_fleet(args.nodes, transition=2.0) as fleet:
            common.register_nodes(fleet.manifest)
            say(f"fleet of {args.nodes} up and registered")
            targets = fleet.targets()
            sample = targets[: args.baseline_sample or len(targets)]
            base = timed_pass("driver, cold", sample, args.lanes, read_with_driver)
            close_all()
            base_wall = base.wall * len(targets) / len(sample)
            say(
                f"baseline: {base.wall:.1f} s for {len(sample)} BMCs, {base_wall:.1f} s scaled, "
                f"{base.failures} failures"
            )
            workers = common.LaneWorkers(services.processes, args.lanes)
            workers.start()
            pids = [pid for tree in workers.pids().values() for pid, _ in tree]
            cpu0 = common.cpu_seconds(pids)
            t0 = time.time()
            ticks, marked = 0, 0
            # Until every node was marked once (a node refreshed more than the monitor
            # interval ago is due again, so "until nothing is due" need not end).
            while marked < args.nodes and time.time() - t0 < RUN_TIMEOUT_S:
                due = monitor()
                if not due:
                    break
                ticks, marked = ticks + 1, marked + due
            state: dict[str, Any] = {}

            def done() -> bool:
                nonlocal state
                state = refreshed(t0)
                return bool(state["done"] >= args.nodes)

            try:
                common.wait_until(done, RUN_TIMEOUT_S, "monitor refresh", poll=0.5)
            except TimeoutError:
                say(f"timed out: {state}")
            cpu = common.cpu_seconds(pids) - cpu0
            workers.stop()
    wall = float(state["last"] or time.time()) - t0
    complete = state["done"] >= args.nodes
    beat_bound = (math.ceil(args.nodes / BATCH_SIZE) - 1) * 60.0
    result.details.update(
        baseline_wall_s=base_wall,
        baseline_sample=len(sample),
        baseline_sample_wall_s=base.wall,
        baseline_failures=base.failures,
        powerq_wall_s=wall,
        monitor_calls=ticks,
        marked=marked,
        refreshed=state,
        lane_worker_cpu_s=cpu,
        lane_worker_cpu_ms_per_node=cpu * 1000 / args.nodes,
        as_shipped_beat_bound_s=beat_bound,
        batch_size=BATCH_SIZE,
    )
    note = "" if complete else f"NOT ALL REFRESHED: {state['done']}/{args.nodes}"
    result.add(
        Row(
            "5 monitor",
            f"refresh {args.nodes:,} BMCs, L={args.lanes}, monitor back to back",
            "s",
            f"<= {GOAL_S:.0f} s",
            f"driver cold read, {args.lanes} threads",
            base_wall,
            wall,
            wall / base_wall,
            complete and wall <= GOAL_S,
            note or f"lane CPU {cpu * 1000 / args.nodes:.1f} ms/node",
        )
    )
    result.add(
        Row(
            "5 monitor",
            "as shipped: beat every 60 s, 1,000 nodes per tick",
            "s",
            "(info)",
            "",
            None,
            beat_bound + wall / max(1, ticks),
            None,
            None,
            f"{math.ceil(args.nodes / BATCH_SIZE)} ticks needed",
        )
    )
    return result


def main(args: argparse.Namespace) -> Result:
    """Run, print, write."""
    result = run(args)
    print(common.rows_table(result.rows))
    result.write()
    return result
