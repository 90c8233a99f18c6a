"""``powerq worker`` and ``powerq beat``: the Celery processes, started the right way."""

from __future__ import annotations

from pathlib import Path

import click

from powerq.config import get_settings
from powerq.tasks.routing import CONTROL_QUEUE, lane_queue


def worker_argv(lane: int | None, loglevel: str) -> list[str]:
    """Celery worker arguments for one lane (or the control queue when ``lane`` is None).

    A lane worker is prefork with concurrency 1: one power step at a time, and
    a SIGKILLed child's message is rejected back to the queue
    (``task_reject_on_worker_lost``), which the solo/threads pools cannot do.
    """
    queue = CONTROL_QUEUE if lane is None else lane_queue(lane)
    name = "control" if lane is None else f"lane{lane}"
    return [
        "worker",
        "--queues",
        queue,
        "--concurrency",
        "1",
        "--pool",
        "prefork",
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
def worker(lane: int | None, control: bool, loglevel: str) -> None:
    """Run one single-concurrency worker for a lane, or the control worker."""
    if (lane is None) == (not control):
        raise click.UsageError("give exactly one of --lane K or --control")
    lanes = get_settings().lanes
    if lane is not None and not 0 <= lane < lanes:
        raise click.BadParameter(
            f"must be 0 … {lanes - 1} (POWERQ_LANES={lanes})", param_hint="--lane"
        )
    from powerq.tasks.app import app

    app.worker_main(worker_argv(None if control else lane, loglevel))


@click.command("beat")
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run celery beat (exactly one per installation) for the sweeper and monitor."""
    from powerq.tasks.app import app

    schedule = Path(get_settings().data_dir) / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", loglevel, "--schedule", str(schedule)])
