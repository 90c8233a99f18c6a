"""An optional journal of the runs a lane worker made, for audits and the
failover tests: who consumed which lane, under which fence, and when.

With ``POWERQ_STEP_JOURNAL=DIR`` set, a lane worker started by ``powerq
agent`` appends one line per run that claimed its request to
``DIR/runs-PID.log``: lane, fence, pid, start and end (``CLOCK_MONOTONIC``,
the same clock in every process of a host), request id. Two workers that
consumed one lane at once show as overlapping runs of two pids on that lane.
Off by default (nothing is written, one environment lookup per run).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from powerq.tasks import lane_fence

JOURNAL_ENV = "POWERQ_STEP_JOURNAL"


class Run(NamedTuple):
    """One journal line."""

    lane: int
    fence: int
    pid: int
    start: float
    end: float
    request_id: str


@contextlib.contextmanager
def claimed_run(request_id: uuid.UUID, started: float) -> Iterator[None]:
    """Journal the block as a run of ``request_id`` that began (its claim) at
    monotonic time ``started``, when the journal is on and this worker holds a
    lane fence."""
    try:
        yield
    finally:
        directory = os.environ.get(JOURNAL_ENV)
        held = lane_fence.held()
        if directory and held is not None and held.fence is not None:
            line = (
                f"{held.lane} {held.fence} {os.getpid()} {started:.6f} "
                f"{time.monotonic():.6f} {request_id}\n"
            )
            fd = os.open(
                Path(directory) / f"runs-{os.getpid()}.log",
                os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                0o600,
            )
            try:
                os.write(fd, line.encode())  # one append: whole lines, never interleaved
            finally:
                os.close(fd)


def read(directory: Path) -> list[Run]:
    """Every run journalled in ``directory``."""
    runs = []
    for path in sorted(directory.glob("runs-*.log")):
        for line in path.read_text().splitlines():
            lane, fence, pid, start, end, request_id = line.split()
            runs.append(Run(int(lane), int(fence), int(pid), float(start), float(end), request_id))
    return runs


def overlaps(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs on one lane, by two different processes, at the same time."""
    found = []
    by_lane: dict[int, list[Run]] = {}
    for run in runs:
        by_lane.setdefault(run.lane, []).append(run)
    for lane_runs in by_lane.values():
        lane_runs.sort(key=lambda run: run.start)
        latest: Run | None = None  # the run (of any pid) that ends last so far
        for run in lane_runs:
            if latest is not None and latest.pid != run.pid and run.start < latest.end:
                found.append((latest, run))
            if latest is None or run.end > latest.end:
                latest = run
    return found
