"""The process-wide IPMI session cache: one pyghmi session per BMC, reused, one user at a time.

Keyed by (address, port, username). Each key has a lock held for the whole
of a login or command, so one process never runs two commands, or two
sessions, against one BMC at once. Sessions idle longer than
``idle_timeout`` are logged out (checked on every use, and swept across the
cache at most every ``idle_timeout / 2``), staying below the BMC's own
inactivity timeout (typically 60 s) and returning its session slots; a
session that failed is dropped and the next use logs in again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from powerq.bmc.base import BmcTarget, BmcUnreachable

DEFAULT_IDLE_TIMEOUT = 20.0
DEFAULT_LOCK_TIMEOUT = 120.0  # a queue of bounded calls ahead of us; beyond this, give up
SWEEP_BATCH = 16  # idle sessions one caller logs out at most

Key = tuple[str, int, str]
Connect = Callable[[BmcTarget], Any]
Disconnect = Callable[[Any], None]


def key_of(target: BmcTarget) -> Key:
    """The cache key of ``target``: one session per (address, port, username)."""
    return (target.address, target.port, target.username)


@dataclass
class Lease:
    """The session handed to one caller; ``invalidate()`` it if it failed."""

    session: Any
    broken: bool = False

    def invalidate(self) -> None:
        """Have the cache log out and forget this session when the lease ends."""
        self.broken = True


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    session: Any = None
    last_used: float = 0.0
    logins: int = 0


class SessionCache:
    """Hands out the one live session of a BMC under that BMC's lock."""

    def __init__(
        self,
        connect: Connect,
        disconnect: Disconnect,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._disconnect = disconnect
        self.idle_timeout = idle_timeout
        self.lock_timeout = lock_timeout
        self._clock = clock
        self._slots: dict[Key, _Slot] = {}
        self._guard = threading.Lock()
        self._last_sweep = clock()

    @contextlib.contextmanager
    def lease(self, target: BmcTarget) -> Iterator[Lease]:
        """Yield a lease on the BMC's live session, logging in first if there is none.

        Call :meth:`Lease.invalidate` inside the block to drop a failed session.

        :raises BmcUnreachable: the BMC's lock stayed taken longer than ``lock_timeout``.
        :raises Exception: whatever ``connect`` raises (nothing is cached then).
        """
        self._sweep_if_due()
        slot = self._slot(key_of(target))
        self._acquire(slot, target)
        try:
            lease = Lease(self._live_session(slot, target))
            try:
                yield lease
            finally:
                if lease.broken:
                    self._drop(slot)
        finally:
            slot.last_used = self._clock()
            slot.lock.release()

    def close(self, target: BmcTarget) -> None:
        """Log out of the BMC's session, if any (waits for a command in progress)."""
        slot = self._slot(key_of(target))
        with slot.lock:
            self._drop(slot)

    def close_all(self) -> None:
        """Log out of every session (each after its command in progress, if any)."""
        for slot in self._all_slots():
            with slot.lock:
                self._drop(slot)

    def logins(self, target: BmcTarget) -> int:
        """How many times this process logged in to the BMC (for tests and stats)."""
        return self._slot(key_of(target)).logins

    def _acquire(self, slot: _Slot, target: BmcTarget) -> None:
        if not slot.lock.acquire(timeout=self.lock_timeout):
            raise BmcUnreachable(
                f"IPMI at {target.label}: still busy with another command of "
                f"this process after {self.lock_timeout:.0f} s",
                address=target.address,
                port=target.port,
            )

    def _slot(self, key: Key) -> _Slot:
        with self._guard:
            return self._slots.setdefault(key, _Slot())

    def _all_slots(self) -> list[_Slot]:
        with self._guard:
            return list(self._slots.values())

    def _live_session(self, slot: _Slot, target: BmcTarget) -> Any:
        if self._idle(slot):
            self._drop(slot)
        if slot.session is None:
            slot.session = self._connect(target)
            slot.logins += 1
        return slot.session

    def _idle(self, slot: _Slot) -> bool:
        return slot.session is not None and self._clock() - slot.last_used > self.idle_timeout

    def _sweep_if_due(self) -> None:
        """Log out idle sessions nobody is using (skips slots busy right now).

        At most :data:`SWEEP_BATCH` per call, so no caller pays for logging out
        a whole fleet; when the batch fills, the next call sweeps on.
        """
        now = self._clock()
        if now - self._last_sweep < self.idle_timeout / 2:
            return
        dropped = 0
        for slot in self._all_slots():
            if dropped == SWEEP_BATCH:
                return  # more may be idle: the next call sweeps on
            dropped += self._drop_if_idle(slot)
        self._last_sweep = now

    def _drop_if_idle(self, slot: _Slot) -> bool:
        if not slot.lock.acquire(blocking=False):
            return False
        try:
            if not self._idle(slot):
                return False
            self._drop(slot)
            return True
        finally:
            slot.lock.release()

    def _drop(self, slot: _Slot) -> None:
        session, slot.session = slot.session, None
        if session is not None:
            self._disconnect(session)
