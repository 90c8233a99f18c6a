"""``powerq worker`` and ``powerq beat``: the Celery processes, started the right way."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from powerq.config import get_settings
from powerq.tasks.restart import run_supervised
from powerq.tasks.routing import CONTROL_QUEUE, lane_queue


def worker_argv(lane: int | None, loglevel: str) -> list[str]:
    """Celery worker arguments for one lane (or the control queue when ``lane`` is None).

    A lane worker is one process with a thread pool of ``POWERQ_LANE_FANOUT``
    threads: it drives that many BMC conversations at once, like ipmipower's
    fanout, while each node's steps stay in order, one at a time (claims and
    leases in PostgreSQL order them; :mod:`powerq.tasks.node_locks` keeps two
    threads off one BMC). A killed worker's unacknowledged messages come back
    after Redis' visibility timeout; long before that, the restarted worker
    ends its predecessor's leases (:mod:`powerq.tasks.lifecycle`) and the
    sweeper re-dispatches from PostgreSQL. The control worker (sweeper,
    monitor ticks, batch pump) stays prefork with concurrency 1: its jobs
    keep Celery's time limits.
    """
    queue = CONTROL_QUEUE if lane is None else lane_queue(lane)
    name = "control" if lane is None else f"lane{lane}"
    pool = ["--pool", "prefork", "--concurrency", "1"]
    if lane is not None:
        pool = ["--pool", "threads", "--concurrency", str(get_settings().lane_fanout)]
    return [
        "worker",
        "--queues",
        queue,
        *pool,
        "--hostname",
        f"{name}@%h",
        "--loglevel",
        loglevel,
        "--without-mingle",
        "--without-gossip",
    ]


@click.command("worker")
@click.option("--lane", type=int, help="Lane number to consume (0 … POWERQ_LANES-1).")
@click.option("--control", is_flag=True, help="Consume the control queue (sweeper, monitor).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option(
    "--supervise/--no-supervise",
    default=True,
    show_default=True,
    help="Restart the Celery worker if it dies (e.g. after losing Redis).",
)
def worker(lane: int | None, control: bool, loglevel: str, supervise: bool) -> None:
    """Run the worker of a lane (its BMC conversations in a bounded thread pool), or the
    control worker."""
    if (lane is None) == (not control):
        raise click.UsageError("give exactly one of --lane K or --control")
    lanes = get_settings().lanes
    if lane is not None and not 0 <= lane < lanes:
        message = f"must be 0 … {lanes - 1} (POWERQ_LANES={lanes})"
        raise click.BadParameter(message, param_hint="--lane")
    argv = worker_argv(None if control else lane, loglevel)
    if supervise:
        sys.exit(run_supervised([sys.executable, "-m", "celery", "-A", "powerq.tasks", *argv]))
    from powerq.tasks.app import app

    app.worker_main(argv)


@click.command("beat")
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run celery beat (exactly one per installation) for the sweeper and monitor."""
    from powerq.tasks.app import app

    schedule = Path(get_settings().data_dir) / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", loglevel, "--schedule", str(schedule)])
