"""Until when a lane worker may consume: set by its agent, read by the worker.

The agent writes, for each lane it holds, the time (:func:`clock`: system-wide
``CLOCK_BOOTTIME``) by which its lease could run out, counted from before the
statement that renewed it was sent and less a safety margin. The lane
worker, a child forked from the agent, reads it from memory they share
(an anonymous shared mapping made before the fork) in a watchdog thread:
once it has passed, the worker stops at once. So a worker stops consuming
before its lease expires when its agent is stopped, hung, or cannot reach
PostgreSQL, and no other agent can take the lane before that.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import sys
import threading
import time

log = logging.getLogger(__name__)
# An agent stops consuming a lane this share of the lease before it could expire;
# a lane worker claims and marks only while at least as much of its lease is left.
MARGIN_SHARE = 0.25


def clock() -> float:
    """Seconds on the clock deadlines are kept in: ``CLOCK_BOOTTIME`` (monotonic,
    the same in every process of the host, and, unlike ``CLOCK_MONOTONIC``,
    counting time the host spent suspended), where the platform has it."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


_SLOT = struct.Struct("d")
# Exit code of a lane worker that stopped because its lease was not renewed in time.
LEASE_LOST_EXIT = 75
WATCH_PERIOD_S = 0.1


class LaneDeadlines:
    """One monotonic deadline per lane, in memory shared with forked children."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self._memory = mmap.mmap(-1, _SLOT.size * lanes)  # MAP_SHARED | MAP_ANONYMOUS

    def set(self, lane: int, until: float) -> None:
        """Lane ``lane`` may be consumed until monotonic time ``until``."""
        _SLOT.pack_into(self._memory, _SLOT.size * lane, until)

    def get(self, lane: int) -> float:
        """The deadline of ``lane`` (0.0: never set, or withdrawn)."""
        return float(_SLOT.unpack_from(self._memory, _SLOT.size * lane)[0])

    def withdraw(self, lane: int) -> None:
        """Lane ``lane`` may not be consumed any more (its worker stops within
        :data:`WATCH_PERIOD_S`)."""
        self.set(lane, 0.0)

    def left_s(self, lane: int) -> float:
        """Seconds until ``lane``'s deadline (negative: passed)."""
        return self.get(lane) - clock()


# The lane this process consumes under its agent's deadline (set by watch()).
_watched: tuple[LaneDeadlines, int] | None = None


def watch(deadlines: LaneDeadlines, lane: int) -> threading.Thread:
    """In a lane worker: a daemon thread that ends this process (exit
    :data:`LEASE_LOST_EXIT`, no cleanup: a step in flight stops where it is,
    as after a SIGKILL, which fenced claims make safe) as soon as ``lane``'s
    deadline has passed. :func:`stop_if_lapsed` makes the same check inline."""
    global _watched
    _watched = (deadlines, lane)

    def run() -> None:
        while deadlines.left_s(lane) > 0:
            time.sleep(WATCH_PERIOD_S)
        _stop(lane)

    thread = threading.Thread(target=run, name=f"lane{lane}-lease-watch", daemon=True)
    thread.start()
    return thread


def stop_if_lapsed() -> None:
    """In a lane worker: end this process now, as the watchdog would, if its lane's
    deadline has passed (nothing in a process that :func:`watch` does not watch).

    The watchdog looks every :data:`WATCH_PERIOD_S`; a worker that was frozen
    (SIGSTOP, a VM paused) past its deadline wakes with every thread at once, and
    a run that slept between checks would otherwise go on talking to its BMC and
    finish before the watchdog's next look. Steps call this before each BMC
    conversation and before a run ends."""
    if _watched is not None and _watched[0].left_s(_watched[1]) <= 0:
        _stop(_watched[1])


def _stop(lane: int) -> None:
    print(
        f"lane {lane}: lease not renewed in time (agent stopped, hung or cut off "
        "from PostgreSQL); stopping now",
        file=sys.stderr,
        flush=True,
    )
    os._exit(LEASE_LOST_EXIT)
