"""``powerq worker`` and ``powerq beat``: the Celery processes, started the right way."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from powerq.config import get_settings


@click.command("worker")
@click.option("--lane", type=int, help="Lane number to consume (0 … POWERQ_LANES-1).")
@click.option("--control", is_flag=True, help="Consume the control queue (sweeper, monitor).")
@click.option("--beat", is_flag=True, help="With --control: run celery beat in it too.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(lane: int | None, control: bool, beat: bool, loglevel: str) -> None:
    """Run the worker of a lane (its BMC conversations in a bounded thread pool), or the
    control worker.

    The worker is one process, ``python -m powerq.tasks.worker``: this command
    replaces itself with it, so the CLI's imports are not kept.
    """
    if (lane is None) == (not control):
        raise click.UsageError("give exactly one of --lane K or --control")
    lanes = get_settings().lanes
    if lane is not None and not 0 <= lane < lanes:
        message = f"must be 0 … {lanes - 1} (POWERQ_LANES={lanes})"
        raise click.BadParameter(message, param_hint="--lane")
    args = ["lane", str(lane)] if lane is not None else ["control", *(["--beat"] if beat else [])]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(
        sys.executable,
        [sys.executable, "-m", "powerq.tasks.worker", *args, "--loglevel", loglevel],
    )


@click.command("beat")
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run celery beat (exactly one per installation) for the sweeper and monitor."""
    from powerq.tasks.app import app

    schedule = Path(get_settings().data_dir) / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", loglevel, "--schedule", str(schedule)])
