"""Benchmark 5: keep 10,000 simulated BMCs refreshed every 60 s, as shipped.

Nodes are registered with no observation; L lane workers run as shipped
(``POWERQ_MONITOR_INTERVAL_S`` 60, ``POWERQ_MONITOR_FANOUT`` default). The
monitor's beat task body (``powerq.tasks.monitor.monitor``) is called as the
beat calls it: once (tick 1, every node due, cold: one RMCP+ login per BMC),
then again one interval later (tick 2, warm: the sessions of tick 1, kept
alive across the quiet minute by pyghmi's keep-alive). Each tick is timed
from the call to the last ``power_state_at`` written; every node must be
refreshed by each tick, without error, within the interval. Just before tick
2 the fleet's status is read, which makes every sim BMC forget sessions idle
longer than its 60 s inactivity timeout, as a real BMC does: a session not
kept alive would fail its read.

Baselines, same fleet, same run: a cold and a warm read of every BMC through
powerq's IPMI driver (``bench/bmc_read_all.py``'s timed pass) from one process
with ``POWERQ_MONITOR_FANOUT`` threads (one lane worker's bound; no database,
no broker), on the first ``--baseline-sample`` BMCs, scaled to the fleet (the
pass is linear in the count). The ratios are tick 1 / cold and tick 2 / warm.
(Not L x fanout threads in one process: pyghmi 1.6 hangs with 256 concurrent
logins in one process, every thread parked on its KEEPALIVE_SESSIONS lock.)

On a shared 2-core machine, ``--nodes 2000`` measures the same things at a
fifth of the size; say so when quoting it.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bench import common
from bench.common import Result, Row, say

GOAL_S = 60.0
INTERVAL_S = 60.0
RUN_TIMEOUT_S = 420.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench monitor``."""
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--lanes", type=int, default=8, help="lane workers (default 8)")
    parser.add_argument(
        "--baseline-sample",
        type=int,
        default=2000,
        help="BMCs read by the baseline passes, scaled to the fleet (default 2000; 0: all)",
    )


def refreshed(since: float) -> dict[str, Any]:
    """How many nodes have an observation newer than ``since`` (epoch), errors, the newest."""
    from sqlalchemy import text

    from powerq.db import session_scope

    with session_scope() as session:
        row = (
            session.execute(
                text(
                    "SELECT count(*) FILTER (WHERE power_state_at >= to_timestamp(:t)) AS done,"
                    " count(*) FILTER (WHERE last_error IS NOT NULL AND"
                    "  coalesce(power_state_at < to_timestamp(:t), true)) AS errors,"
                    " extract(epoch FROM max(power_state_at)) AS last FROM nodes"
                ),
                {"t": since},
            )
            .mappings()
            .one()
        )
    return {"done": int(row["done"]), "errors": int(row["errors"]), "last": row["last"]}


def tick(nodes: int, pids: list[int]) -> dict[str, Any]:
    """One beat tick: call the monitor, wait until every node was refreshed; its figures."""
    from powerq.tasks.monitor import monitor

    cpu0, t0 = common.cpu_seconds(pids), time.time()
    marked = monitor()
    marked_s = time.time() - t0
    state: dict[str, Any] = {}

    def done() -> bool:  # every node read, or failed (a failure waits for the next tick)
        nonlocal state
        state = refreshed(t0)
        return state["done"] + state["errors"] >= nodes

    try:
        common.wait_until(done, RUN_TIMEOUT_S, "monitor refresh", poll=0.25)
    except TimeoutError:
        say(f"timed out: {state}")
    wall = float(state["last"] or time.time()) - t0
    cpu = common.cpu_seconds(pids) - cpu0
    return {
        "started": t0,
        "marked": marked,
        "monitor_call_s": marked_s,
        "wall_s": wall,
        "complete": state["done"] >= nodes,
        "refreshed": state,
        "lane_cpu_s": cpu,
        "lane_cpu_ms_per_node": cpu * 1000 / nodes,
    }


def sessions_opened(fleet: Any) -> int:
    """Logins the fleet accepted so far (reading it also expires idle sessions)."""
    return sum(int(bmc["sessions_opened"]) for bmc in fleet.control.bmcs())


def baselines(fleet: Any, threads: int, sample_size: int) -> dict[str, Any]:
    """Cold and warm raw driver reads of a sample, scaled to the fleet."""
    from bench.bmc_read_all import read_with_driver, timed_pass
    from powerq.bmc import close_all

    targets = fleet.targets()
    sample = targets[: sample_size or len(targets)]
    scale = len(targets) / len(sample)
    cold = timed_pass("driver, cold", sample, threads, read_with_driver)
    warm = timed_pass("driver, warm", sample, threads, read_with_driver)
    close_all()
    say(
        f"baseline on {len(sample)} BMCs, {threads} threads: cold {cold.wall:.1f} s, "
        f"warm {warm.wall:.1f} s; failures {cold.failures + warm.failures}"
    )
    return {
        "sample": len(sample),
        "threads": threads,
        "cold_wall_s": cold.wall * scale,
        "warm_wall_s": warm.wall * scale,
        "failures": cold.failures + warm.failures,
    }


def run(args: argparse.Namespace) -> Result:
    """Baselines, then two ticks of the monitor through the lanes, one interval apart."""
    result = Result("monitor", {"nodes": args.nodes, "lanes": args.lanes})
    with common.bench_services(args.lanes, redis_url=args.redis_url) as services:
        os.environ["POWERQ_MONITOR_INTERVAL_S"] = str(INTERVAL_S)
        from powerq.config import get_settings

        get_settings.cache_clear()
        fanout = get_settings().monitor_fanout
        with common.sim_fleet(args.nodes, transition=2.0) as fleet:
            common.register_nodes(fleet.manifest)
            say(f"fleet of {args.nodes} up and registered")
            base = baselines(fleet, fanout, args.baseline_sample)
            workers = common.LaneWorkers(services.processes, args.lanes)
            workers.start()
            pids = [pid for tree in workers.pids().values() for pid, _ in tree]
            logins0 = sessions_opened(fleet)
            first = tick(args.nodes, pids)
            say(f"tick 1 (cold): {first['wall_s']:.1f} s, {first['refreshed']}")
            time.sleep(max(0.0, first["started"] + INTERVAL_S - time.time()))
            logins1 = sessions_opened(fleet)  # also expires sessions idle > 60 s at the BMCs
            second = tick(args.nodes, pids)
            logins2 = sessions_opened(fleet)
            say(f"tick 2 (warm): {second['wall_s']:.1f} s, {second['refreshed']}")
            memory = workers.memory()
            workers.stop()
    first["logins"], second["logins"] = logins1 - logins0, logins2 - logins1
    result.details.update(baseline=base, tick1=first, tick2=second, lane_memory=memory)
    for name, figures, label, baseline in (
        ("tick 1, cold (a login per BMC)", first, "driver cold read", base["cold_wall_s"]),
        ("tick 2, warm (60 s later)", second, "driver warm read", base["warm_wall_s"]),
    ):
        result.add(_row(args, name, figures, label, baseline))
    return result


def _row(
    args: argparse.Namespace, name: str, figures: dict[str, Any], label: str, baseline: float
) -> Row:
    wall, state = figures["wall_s"], figures["refreshed"]
    ok = figures["complete"] and state["errors"] == 0 and wall <= GOAL_S
    note = (
        f"lane CPU {figures['lane_cpu_ms_per_node']:.1f} ms/node, "
        f"{figures['logins']} logins, {state['errors']} errors"
    )
    if not figures["complete"]:
        note = f"NOT ALL REFRESHED: {state['done']}/{args.nodes}; " + note
    return Row(
        "5 monitor",
        f"refresh {args.nodes:,} BMCs, L={args.lanes}, as shipped: {name}",
        "s",
        f"<= {GOAL_S:.0f} s",
        f"{label}, 1 process x fanout threads",
        baseline,
        wall,
        wall / baseline,
        ok,
        note,
    )


def main(args: argparse.Namespace) -> Result:
    """Run, print, write."""
    result = run(args)
    print(common.rows_table(result.rows))
    result.write()
    return result
