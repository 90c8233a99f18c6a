"""Benchmark 6: memory and process count of powerq's processes.

Two measurements, against one baseline, in the same run:

* **The quick start** (default): ``powerq up`` with ``--lanes`` lanes and
  ``--sim-nodes`` simulated BMCs on embedded PostgreSQL and Redis in a fresh
  data dir, after a batch off and a batch on of every node through the CLI.
  Every process of its tree is measured from ``/proc/PID/smaps_rollup``:
  PSS splits pages shared between processes (fork, libraries) fairly, so the
  figures add up to what the stack costs the machine. A lane is forked from
  the supervisor (``powerq up``) after it imported the lanes' modules; its
  cost is its own PSS plus its share of the supervisor's (the supervisor's PSS
  divided by the workers forked from it). Processes are counted in three
  parties: powerq's own (supervisor, lanes, control worker, API), the
  simulated fleet (stands in for the hardware), and the embedded services
  (Redis, and PostgreSQL: 5 server processes plus one backend per open
  connection).
* **Procfile lanes** (``--from-batch``): the lanes of the benchmark 1 run
  that just finished (``bench/results/batch.json``), each one
  ``powerq worker --lane K`` process.

Baseline: a bare Celery worker (``bench/bare_celery.py``: no powerq imported,
same broker, the lane's pool: threads, ``POWERQ_LANE_FANOUT``) after 1,000
no-op tasks.
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
GOAL_STACK_MIB = 600.0
GOAL_PROCESSES = 12
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
    parser.add_argument("--sim-nodes", type=int, default=50, help="quick start's fleet")


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
    """The quick start's memory and processes (and, with ``--from-batch``, the
    Procfile lanes of benchmark 1) against the bare worker."""
    with common.bench_services(1, redis_url=args.redis_url) as services:
        bare = bare_worker(services)
    bare_pss = sum(entry.get("pss_mib", 0.0) for entry in bare)
    result = Result("memory", {"from_batch": args.from_batch, "lanes": args.lanes,
                               "sim_nodes": args.sim_nodes})  # fmt: skip
    result.details["bare_worker"] = bare
    stack = quick_start(args.lanes, args.sim_nodes)
    result.details["quick_start"] = stack
    stack_rows(result, stack, bare_pss)
    if args.from_batch:
        batch = json.loads((common.RESULTS_DIR / "batch.json").read_text())
        runs = {k: v for k, v in batch["details"].items() if k.startswith("L")}
        result.details["batch_runs"] = {k: v["memory_summary"] for k, v in runs.items()}
        for key, detail in runs.items():
            lane = detail["memory_summary"]["whole lane pss_mib"]
            result.add(Row("6 memory", f"one Procfile lane after batch {key}: PSS", "MiB",
                           f"<= {GOAL_MIB:.0f} MiB", "bare Celery worker, threads pool",
                           bare_pss, lane, lane / bare_pss, lane <= GOAL_MIB))  # fmt: skip
    say(f"bare worker: {bare}")
    return result


def quick_start(lanes: int, sim_nodes: int) -> dict[str, Any]:
    """Run ``powerq up`` (embedded services, fresh data dir), a batch off and on,
    and measure every process of it; then stop it."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    data_dir = Path(tempfile.mkdtemp(prefix="powerq-bench-up-"))
    port = common.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERQ_")}
    env.update(POWERQ_DATA_DIR=str(data_dir), POWERQ_LANES=str(lanes))
    log = data_dir / "up.log"
    argv = [sys.executable, "-m", "powerq.cli", "up", "--sim-nodes", str(sim_nodes),
            "--port", str(port)]  # fmt: skip
    with log.open("wb") as output:
        up = subprocess.Popen(argv, env=env, cwd=common.REPO_DIR, stdout=output,
                              stderr=subprocess.STDOUT)  # fmt: skip
    try:
        common.wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), 300, "powerq up")
        client = {**env, "POWERQ_API_URL": f"http://127.0.0.1:{port}",
                  "POWERQ_TOKEN": (data_dir / "admin-token").read_text().strip()}  # fmt: skip
        for action in ("off", "on"):
            subprocess.run([sys.executable, "-m", "powerq.cli", "batch", action, "--all",
                            "--wait"], env=client, check=True, capture_output=True,
                           timeout=300)  # fmt: skip
        return measure_stack(up.pid)
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            up.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


def party_of(role: str) -> str:
    """Who a process belongs to: powerq, the simulated fleet, or the services."""
    if role in ("redis", "postgres", "postgres backend"):
        return "services"
    return "fleet" if role == "simfleet" else "powerq"


def role_of(depth: int, name: str, cmd: str) -> str:
    """A process's role in ``powerq up``'s tree, from its name and command line."""
    if depth == 0:
        return "supervisor"
    if name.startswith("lane") or name == "control":
        return "lane" if name.startswith("lane") else "control"
    if "gunicorn" in cmd:
        return "api"
    if "simfleet" in cmd:
        return "simfleet"
    if "redis-server" in cmd:
        return "redis"
    if cmd.startswith("postgres: postgres "):
        return "postgres backend"
    return "postgres" if "postgres" in cmd else "other"


def measure_stack(pid: int) -> dict[str, Any]:
    """Every process below ``pid`` (and itself), with role, party and memory."""
    from pathlib import Path

    processes = []
    for child, depth in common.descendants(pid):
        try:
            name = Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            continue
        info = common.memory_of(child)
        role = role_of(depth, name, info.get("cmd", ""))
        processes.append({"role": role, "party": party_of(role), "name": name, **info})
    lanes = [p["pss_mib"] for p in processes if p["role"] == "lane"]
    forked = len(lanes) + sum(1 for p in processes if p["role"] == "control")
    supervisor = next(p["pss_mib"] for p in processes if p["role"] == "supervisor")
    parties: dict[str, dict[str, float]] = {}
    for p in processes:
        party = parties.setdefault(p["party"], {"processes": 0, "pss_mib": 0.0})
        party["processes"] += 1
        party["pss_mib"] += p.get("pss_mib", 0.0)
    return {
        "processes": processes,
        "parties": parties,
        "lane_pss_mib": max(lanes),
        "supervisor_share_mib": supervisor / max(forked, 1),
        "total_pss_mib": sum(p.get("pss_mib", 0.0) for p in processes),
        "total_processes": len(processes),
    }


def stack_rows(result: Result, stack: dict[str, Any], bare_pss: float) -> None:
    """The quick start's figures rows."""
    lane = stack["lane_pss_mib"] + stack["supervisor_share_mib"]
    own = stack["parties"]["powerq"]
    baseline = "bare Celery worker, threads pool"
    services = stack["parties"].get("services", {"processes": 0, "pss_mib": 0.0})
    fleet = stack["parties"].get("fleet", {"processes": 0, "pss_mib": 0.0})
    note = (f"lane {stack['lane_pss_mib']:.0f} + supervisor share "
            f"{stack['supervisor_share_mib']:.0f}")  # fmt: skip
    result.add(Row("6 memory", "one lane of powerq up (quick start), after a batch: PSS", "MiB",
                   f"<= {GOAL_MIB:.0f} MiB", baseline, bare_pss, lane, lane / bare_pss,
                   lane <= GOAL_MIB, note))  # fmt: skip
    result.add(Row("6 memory", "powerq up: powerq's own processes", "processes",
                   f"<= {GOAL_PROCESSES}", "", None, own["processes"], None,
                   own["processes"] <= GOAL_PROCESSES,
                   f"+ fleet {fleet['processes']}, + services {services['processes']} "
                   f"(total {stack['total_processes']})"))  # fmt: skip
    total = stack["total_pss_mib"]
    result.add(Row("6 memory", "powerq up: PSS of every process (fleet, services included)",
                   "MiB", f"<= {GOAL_STACK_MIB:.0f} MiB", baseline, bare_pss, total,
                   total / bare_pss, total <= GOAL_STACK_MIB,
                   f"powerq {own['pss_mib']:.0f}, fleet {fleet['pss_mib']:.0f}, "
                   f"services {services['pss_mib']:.0f}"))  # fmt: skip


def main(args: argparse.Namespace) -> Result:
    """Run, print, write."""
    result = run(args)
    print(common.rows_table(result.rows))
    result.write()
    return result
