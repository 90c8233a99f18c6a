"""Benchmark 6: memory of a lane worker after benchmark 1.

A lane worker as shipped is ``powerq worker --lane K``: a supervisor process
(restarts Celery if it dies) and the Celery worker, which runs the steps in
its thread pool. After each powerq run of benchmark 1 every process of every
lane is measured from ``/proc/PID/smaps_rollup``: RSS, and PSS, which splits
pages shared between processes (fork, libraries) fairly, so the PSS of the
lane's processes added up is what one lane costs the machine.

Baseline, same run: a bare Celery worker (``bench/bare_celery.py``: no powerq
imported, same broker, the lane's pool: threads, ``POWERQ_LANE_FANOUT``)
after 1,000 no-op tasks.

``python -m bench memory`` runs benchmark 1 itself (1,000 BMCs at L=8, no
ipmitool baselines); ``--from-batch`` (what ``all`` does) reads the figures of
the benchmark 1 run that just finished from ``bench/results/batch.json``.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from typing import Any

from bench import common
from bench.common import Result, Row, say

GOAL_MIB = 80.0
NOOP_TASKS = 1000
LANE_FANOUT = 32  # powerq's default POWERQ_LANE_FANOUT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench memory``."""
    parser.add_argument(
        "--from-batch",
        action="store_true",
        help="use the lane memory recorded by the last `bench batch` run",
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--lanes", type=int, default=8)


def bare_worker(services: common.Services) -> list[dict[str, Any]]:
    """Start the bare Celery worker, run 1,000 no-op tasks through it, measure it."""
    import redis

    from bench.bare_celery import QUEUE, app, noop

    group = services.processes
    child = group.python(
        "bare",
        "celery",
        "-A",
        "bench.bare_celery",
        "worker",
        "-Q",
        QUEUE,
        "-c",
        str(LANE_FANOUT),
        "--pool",
        "threads",
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        "WARNING",
        "-n",
        "bare@%h",
        extra_env={"PYTHONPATH": str(common.REPO_DIR)},
    )
    name = f"bare@{socket.gethostname()}"
    common.wait_until(lambda: bool(app.control.ping([name], timeout=1.0)), 60, "bare worker")
    for i in range(NOOP_TASKS):
        noop.delay(i)
    broker = redis.Redis.from_url(services.broker_url)
    common.wait_until(lambda: broker.llen(QUEUE) == 0, 120, "bare worker queue")
    time.sleep(2)  # the last tasks finish
    roles = {0: "celery worker"}
    out = [
        {"role": roles.get(depth, f"depth {depth}"), **common.memory_of(pid)}
        for pid, depth in common.descendants(child.process.pid)
    ]
    group.stop("bare", timeout=10)
    return out


def run(args: argparse.Namespace) -> Result:
    """Lane memory (from benchmark 1) against the bare worker."""
    if args.from_batch:
        batch = json.loads((common.RESULTS_DIR / "batch.json").read_text())
    else:
        from bench import batch as batch_bench

        batch_args = argparse.Namespace(
            nodes=args.nodes,
            lanes=str(args.lanes),
            no_baselines=True,
            profile=False,
            submit="auto",
            redis_url=args.redis_url,
        )
        batch = json.loads(json.dumps(batch_bench.run(batch_args).__dict__, default=str))
    runs = {k: v for k, v in batch["details"].items() if k.startswith("L")}
    if not runs:
        raise RuntimeError("bench/results/batch.json holds no powerq run")
    with common.bench_services(1, redis_url=args.redis_url) as services:
        bare = bare_worker(services)
    result = Result("memory", {"from_batch": args.from_batch, "batch_params": batch["params"]})
    bare_pss = sum(entry.get("pss_mib", 0.0) for entry in bare)
    bare_rss = sum(entry.get("rss_mib", 0.0) for entry in bare)
    result.details.update(
        bare_worker=bare, batch_runs={k: v["memory_summary"] for k, v in runs.items()}
    )
    for key, detail in runs.items():
        summary = detail["memory_summary"]
        lane = summary["whole lane pss_mib"]
        result.add(
            Row(
                "6 memory",
                f"one lane after batch {key}: PSS of its processes",
                "MiB",
                f"<= {GOAL_MIB:.0f} MiB",
                "bare Celery worker, threads pool",
                bare_pss,
                lane,
                lane / bare_pss,
                lane <= GOAL_MIB,
                f"RSS: supervisor {summary['supervisor rss_mib']:.0f}, "
                f"celery worker {summary['celery main rss_mib']:.0f}",
            )
        )
        worker = summary["celery main rss_mib"]
        result.add(
            Row(
                "6 memory",
                f"lane's Celery worker RSS after batch {key}",
                "MiB",
                f"<= {GOAL_MIB:.0f} MiB",
                "bare Celery worker, threads pool",
                bare_rss,
                worker,
                worker / bare_rss,
                worker <= GOAL_MIB,
            )
        )
    say(f"bare worker: {bare}")
    return result


def main(args: argparse.Namespace) -> Result:
    """Run, print, write."""
    result = run(args)
    print(common.rows_table(result.rows))
    result.write()
    return result
