"""A lane worker ends itself once its agent's deadline for the lane passes (the
deadline lives in memory shared across fork), and the journal finds two
processes consuming one lane at once."""

from __future__ import annotations

import multiprocessing
import time

from powerq.agent.deadline import LEASE_LOST_EXIT, LaneDeadlines, clock, watch
from powerq.tasks.journal import Run, overlaps


def _consume_until_stopped(deadlines: LaneDeadlines) -> None:
    watch(deadlines, 1)
    time.sleep(30)  # a worker that would consume on and on


def _lane_worker(deadlines: LaneDeadlines) -> multiprocessing.process.BaseProcess:
    """A forked child that consumes lane 1 under ``deadlines``' watch."""
    child = multiprocessing.get_context("fork").Process(
        target=_consume_until_stopped, args=(deadlines,)
    )
    child.start()
    return child


def test_the_watchdog_ends_the_worker_when_the_deadline_passes() -> None:
    deadlines = LaneDeadlines(lanes=4)
    deadlines.set(1, clock() + 0.5)
    child = _lane_worker(deadlines)
    time.sleep(0.2)
    deadlines.set(1, clock() + 0.5)  # renewed by the agent, seen by the child
    time.sleep(0.4)
    assert child.is_alive()

    child.join(10)  # no renewal any more
    assert child.exitcode == LEASE_LOST_EXIT


def test_a_withdrawn_lane_stops_its_worker_at_once() -> None:
    deadlines = LaneDeadlines(lanes=2)
    deadlines.set(1, clock() + 60)
    child = _lane_worker(deadlines)
    deadlines.withdraw(1)

    child.join(10)
    assert child.exitcode == LEASE_LOST_EXIT


def _run(lane: int, pid: int, start: float, end: float) -> Run:
    return Run(lane, pid, pid, start, end, f"r{pid}-{start}")


def test_runs_of_two_processes_on_one_lane_at_once_are_overlaps() -> None:
    runs = [
        _run(0, 10, 0.0, 5.0),
        _run(0, 10, 1.0, 2.0),  # one process, many runs at once: fine
        _run(0, 11, 4.0, 6.0),  # another process while 10 still ran
        _run(0, 12, 6.5, 7.0),  # after both: fine
        _run(1, 13, 0.0, 9.0),  # another lane: fine
    ]

    assert overlaps(runs) == [(runs[0], runs[2])]


def test_a_hand_over_after_the_last_run_is_no_overlap() -> None:
    assert overlaps([_run(0, 10, 0.0, 1.0), _run(0, 11, 1.5, 2.0)]) == []
