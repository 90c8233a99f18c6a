"""``python -m powerq.tasks.worker lane K`` / ``… control``: a Celery worker as one light process.

* A lane worker consumes one lane queue with a pool of ``POWERQ_LANE_FANOUT``
  threads: it drives that many BMC conversations at once, like ipmipower's
  fanout, while each node's steps stay in order, one at a time (claims and
  leases in PostgreSQL order them; :mod:`powerq.tasks.node_locks` keeps two
  threads off one BMC). A killed worker's unacknowledged messages come back
  after Redis' visibility timeout; long before that, the restarted worker
  ends its predecessor's leases (:mod:`powerq.tasks.lifecycle`) and the
  sweeper re-dispatches from PostgreSQL.
* The control worker (sweeper, monitor ticks, batch pump) runs its jobs one at
  a time in its main thread (solo pool); with ``--beat`` it also runs Celery
  beat as a thread (exactly one beat per installation).

Nothing here waits on Celery's time limits (a thread pool cannot enforce
them): every database statement is bounded by PostgreSQL's
``statement_timeout`` (:func:`powerq.db.connect_args`), every Redis call by
the broker's socket timeouts (``celeryconfig``), every BMC call by its
driver's timeouts, and a step run parks after ``steps.MAX_RUN_S``.

The worker is built with ``app.Worker`` directly rather than through
``celery worker``'s command line, which imports click-repl, prompt_toolkit
and every installed Celery command plugin (Flower, tornado,
prometheus_client). A lane imports only the step and refresh tasks, settings,
the database, leases and, once ready, the BMC drivers its nodes use
(:func:`powerq.tasks.lifecycle.preload_drivers`).

When Celery gives up by itself (e.g. "Unrecoverable error" after Redis went
away while it held unacknowledged messages), the process re-executes itself
after a backoff of 1, 2, 4 … 30 s (reset after a minute of running): same
pid, fresh interpreter. A death by signal is for its supervisor (``powerq up``,
systemd, honcho) to handle.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from powerq.agent.deadline import LaneDeadlines

# A lane consumes only steps (powerq.step) and refreshes (powerq.refresh*).
LANE_TASK_MODULES = ["powerq.tasks.steps", "powerq.tasks.monitor"]
MAX_BACKOFF_S = 30.0
STABLE_RUN_S = 60.0
_RESPAWNS_ENV = "POWERQ_WORKER_RESPAWNS"


def parse(argv: list[str]) -> argparse.Namespace:
    """``lane K`` or ``control [--beat]``, and ``--loglevel``."""
    parser = argparse.ArgumentParser(prog="python -m powerq.tasks.worker")
    kinds = parser.add_subparsers(dest="kind", required=True)
    lane = kinds.add_parser("lane", help="the worker of one lane")
    lane.add_argument("lane", type=int, help="lane number, 0 … POWERQ_LANES-1")
    lane.add_argument("--hostname", help="Celery node name (default laneK@this host)")
    control = kinds.add_parser("control", help="the control worker (sweeper, monitor)")
    control.add_argument("--beat", action="store_true", help="also run celery beat (a thread)")
    for sub in (lane, control):
        sub.add_argument("--loglevel", default="INFO")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> Any:
    """The Celery ``WorkController`` that ``args`` describe.

    :raises SystemExit: a lane outside 0 … POWERQ_LANES-1.
    """
    from powerq.config import get_settings
    from powerq.tasks.app import app
    from powerq.tasks.routing import CONTROL_QUEUE, lane_queue

    settings = get_settings()
    common = {"loglevel": args.loglevel, "without_mingle": True, "without_gossip": True}
    if args.kind == "control":
        if args.beat:
            app.steps["worker"].add(_beat_step())
        return app.Worker(
            hostname=f"control@{socket.gethostname()}",
            queues=[CONTROL_QUEUE],
            pool_cls="solo",
            beat_thread=args.beat,
            **common,
        )
    if not 0 <= args.lane < settings.lanes:
        raise SystemExit(f"lane must be 0 … {settings.lanes - 1} (POWERQ_LANES={settings.lanes})")
    app.conf.include = LANE_TASK_MODULES
    return app.Worker(
        hostname=getattr(args, "hostname", None) or f"lane{args.lane}@{socket.gethostname()}",
        queues=[lane_queue(args.lane)],
        pool_cls="threads",
        concurrency=settings.lane_fanout,
        **common,
    )


def _beat_step() -> Any:
    from celery import bootsteps

    class Beat(bootsteps.StartStopStep):  # type: ignore[misc]
        """Celery beat as a thread of the worker (Celery's own ``-B`` forks a process)."""

        label = "BeatThread"

        def __init__(self, w: Any, beat_thread: bool = False, **kwargs: Any) -> None:
            self.enabled = beat_thread
            super().__init__(w, **kwargs)

        def create(self, w: Any) -> Any:
            from celery.beat import EmbeddedService

            from powerq.config import get_settings

            schedule = get_settings().data_dir / "celerybeat-schedule"
            schedule.parent.mkdir(parents=True, exist_ok=True)
            return EmbeddedService(w.app, schedule_filename=str(schedule), thread=True)

    return Beat


_stopping = False


def _asked_to_stop(**_: Any) -> None:
    global _stopping
    _stopping = True


def preload(kind: str) -> None:
    """Import what a worker of ``kind`` (``lane`` or ``control``) runs, without
    connecting anywhere: a parent that forks workers calls this once so that
    they share these modules' memory."""
    import celery.apps.worker
    import celery.concurrency.solo
    import celery.concurrency.thread
    import celery.worker.consumer  # noqa: F401
    import kombu.transport.redis  # noqa: F401

    from powerq.tasks.app import app

    modules = LANE_TASK_MODULES if kind == "lane" else app.conf.include
    for module in modules:
        __import__(module)


def serve(
    args: argparse.Namespace,
    ready_file: Path | None = None,
    lease: LaneLease | None = None,
) -> int:
    """Run the worker ``args`` describe until it stops; return its exit code.
    ``ready_file`` is created once the worker consumes (for a supervisor to see).
    With ``lease`` (a lane worker forked by ``powerq agent``) the worker claims
    and sends only under that lease's fence, and ends itself as soon as the
    agent's deadline for the lane passes (:mod:`powerq.agent.deadline`)."""
    from celery.signals import worker_ready, worker_shutting_down

    if args.kind == "lane":
        _run_under(lease, args.lane)
    worker_shutting_down.connect(_asked_to_stop, weak=False)
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)
        worker_ready.connect(lambda **_: ready_file.touch(), weak=False)
    worker = build(args)
    worker.start()
    return int(worker.exitcode or 0)


@dataclass(frozen=True)
class LaneLease:
    """The lease a lane worker runs under: its fence, and where its agent keeps
    the lane's deadline."""

    fence: int
    deadlines: LaneDeadlines


def _run_under(lease: LaneLease | None, lane: int) -> None:
    """Claim as lane ``lane``'s worker, under ``lease`` if the agent gave one."""
    from powerq.agent.deadline import watch
    from powerq.tasks.lane_fence import LaneFence, hold

    hold(LaneFence(lane, lease.fence if lease is not None else None))
    if lease is not None:
        watch(lease.deadlines, lane)


def main(argv: list[str] | None = None) -> None:
    """Run the worker; re-execute this process (with backoff) if Celery gave up by itself."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    started = time.monotonic()
    code = serve(args)
    if _stopping or code == 0:
        sys.exit(code)
    respawns = int(os.environ.get(_RESPAWNS_ENV, "0"))
    respawns = 0 if time.monotonic() - started > STABLE_RUN_S else respawns + 1
    delay = min(2.0 ** max(respawns - 1, 0), MAX_BACKOFF_S)
    print(f"worker exited with {code}; starting again in {delay:.0f} s", file=sys.stderr)
    _sleep_or_exit(delay)
    os.environ[_RESPAWNS_ENV] = str(respawns)
    os.execv(sys.executable, [sys.executable, "-m", "powerq.tasks.worker", *argv])


def _sleep_or_exit(seconds: float) -> None:
    """Sleep, leaving at once (exit 0) on SIGTERM or SIGINT."""

    def leave(signum: int, frame: object) -> None:
        sys.exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, leave)
    time.sleep(seconds)


if __name__ == "__main__":
    main()
