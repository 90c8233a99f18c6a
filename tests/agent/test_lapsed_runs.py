"""A lane worker whose lease lapsed does nothing more, even in the moment before
its watchdog looks: a worker frozen past its deadline (SIGSTOP, a paused VM)
wakes with all its threads at once, and a run that slept between two checks
would otherwise go on to its next BMC conversation and finish."""

from __future__ import annotations

import multiprocessing
from typing import Any

from powerq.agent import deadline
from powerq.agent.deadline import LEASE_LOST_EXIT, LaneDeadlines, clock
from powerq.tasks import steps


def _in_child(target: Any, *args: Any) -> int | None:
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(10)
    return child.exitcode


def _next_step_after_lapse(deadlines: LaneDeadlines) -> None:
    deadline._watched = (deadlines, 1)  # as watch() sets it, without its thread
    steps.perform(None, None)  # type: ignore[arg-type]  # must not get to look at them


def test_a_step_after_the_deadline_ends_the_worker_before_touching_the_bmc() -> None:
    deadlines = LaneDeadlines(lanes=2)
    deadlines.set(1, clock() - 0.01)  # the lease lapsed while the worker slept

    assert _in_child(_next_step_after_lapse, deadlines) == LEASE_LOST_EXIT


def test_a_step_within_the_deadline_goes_ahead() -> None:
    deadlines = LaneDeadlines(lanes=2)
    deadlines.set(1, clock() + 60)

    # it goes on to the step itself (which fails here, on its missing claim)
    assert _in_child(_next_step_after_lapse, deadlines) not in (LEASE_LOST_EXIT, 0)


def _unwatched() -> None:
    deadline._watched = None
    deadline.stop_if_lapsed()


def test_a_worker_without_an_agent_checks_no_deadline() -> None:
    assert _in_child(_unwatched) == 0
