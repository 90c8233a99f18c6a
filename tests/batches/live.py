"""A live stack for batch and CLI tests: the sim fleet over real IPMI, one worker per
lane and the control worker (which runs ``powerq.batch_pump``), but no beat: batches
must progress through the executor's ring, not the sweeper (tests call
:func:`powerq.tasks.sweeper.sweep_once` themselves where they mean to)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from powerq.batches import BatchView, batch_view
from powerq.bmc.simfleet.launcher import SimFleetProcess
from powerq.db import session_scope
from powerq.tasks.app import app
from powerq.tasks.routing import CONTROL_QUEUE
from tests.stack import Stack

TRANSITION_S = 0.5


@contextlib.contextmanager
def live_stack(log_dir: Path, count: int) -> Iterator[Stack]:
    """Fleet, lane workers and control worker; asserts no power operations overlapped."""
    with SimFleetProcess(count=count, transition=TRANSITION_S, soft_delay=1.0) as fleet:
        stack = Stack(fleet, log_dir)
        try:
            stack.start_workers(wait=False)
            start_control(stack)
            for lane in range(stack.lanes):
                stack.wait_worker(lane)
            yield stack
        finally:
            stop_quickly(stack)
        overlaps = fleet.control.overlaps()
    assert overlaps["total"] == 0, f"power operations overlapped: {overlaps}"


def stop_quickly(stack: Stack) -> None:
    """SIGTERM every worker at once (they shut down in parallel), then reap them."""
    for child in stack.processes.children.values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGTERM)
    stack.stop()


def control_name() -> str:
    """The control worker's Celery node name."""
    return f"control@{socket.gethostname()}"


@contextlib.contextmanager
def control_paused() -> Iterator[None]:
    """The control worker stops consuming its queue (``powerq.batch_pump`` messages
    wait in Redis, as if it were down) until the block ends."""
    app.control.cancel_consumer(CONTROL_QUEUE, destination=[control_name()], reply=True)
    try:
        yield
    finally:
        app.control.add_consumer(CONTROL_QUEUE, destination=[control_name()], reply=True)


def start_control(stack: Stack, timeout: float = 60.0) -> None:
    """Start the control worker and wait until it answers a ping.

    :raises TimeoutError: it did not come up (its log says why).
    """
    stack.processes.python("control", "powerq.cli", "worker", "--control")
    name = control_name()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.control.ping(destination=[name], timeout=0.5):
            return
    raise TimeoutError(f"control worker did not start; see {stack.processes.log_dir}")


def reset(stack: Stack) -> Stack:
    """Every BMC healthy, on, with empty logs."""
    for row in stack.fleet.manifest:
        stack.fleet.control.clear_fault(row["name"])
        stack.fleet.control.set_behaviour(row["name"], transition=TRANSITION_S, soft_delay=1.0)
        stack.fleet.control.set_power(row["name"], "on")
    stack.fleet.control.reset_logs()
    return stack


def wait_batch(batch_id: uuid.UUID, timeout: float = 120.0) -> BatchView:
    """Poll until the batch has finished; return it with results.

    :raises TimeoutError: it has not (its counts are in the message).
    """
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as session:
            view = batch_view(session, batch_id)
        if view.finished:
            return view
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} not finished: {view.counts}")
        time.sleep(0.2)


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of ``[start, end]`` intervals that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, change in events:  # ends sort before starts at the same instant
        current += change
        peak = max(peak, current)
    return peak
