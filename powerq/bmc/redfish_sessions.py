"""The process-wide Redfish session cache: one logged-in sushy client per BMC, reused,
one user at a time (the same idea as :mod:`powerq.bmc.ipmi_sessions`).

Keyed by (address, port, username). Each key has a lock held for the whole
of a login or call, so one process never runs two calls, or opens two
sessions, against one BMC at once. A session whose node changed (password,
system path, TLS options) is logged out and opened again; one idle longer than
``idle_timeout`` is logged out on its next use (returning the BMC's session
slot), as is every session at :meth:`SessionCache.close_all`.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from powerq.bmc.base import BmcTarget, BmcUnreachable

DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_LOCK_TIMEOUT = 120.0

Key = tuple[str, int, str]
S = TypeVar("S")


def key_of(target: BmcTarget) -> Key:
    """The cache key of ``target``: one session per (address, port, username)."""
    return (target.address, target.port, target.username)


def fingerprint(target: BmcTarget) -> str:
    """A digest of everything else a session depends on (never stored in clear)."""
    parts = (
        target.password,
        target.system or "",
        str(target.verify_tls),
        target.ca_bundle or "",
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass
class Lease(Generic[S]):
    """The session handed to one caller; ``invalidate()`` it if it failed."""

    session: S
    broken: bool = False

    def invalidate(self) -> None:
        """Have the cache log out and forget this session when the lease ends."""
        self.broken = True


@dataclass
class _Slot(Generic[S]):
    lock: threading.Lock = field(default_factory=threading.Lock)
    session: S | None = None
    fingerprint: str = ""
    last_used: float = 0.0
    logins: int = 0


class SessionCache(Generic[S]):
    """Hands out the one live session of a BMC under that BMC's lock."""

    def __init__(
        self,
        connect: Callable[[BmcTarget], S],
        disconnect: Callable[[S], None],
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
        self._slots: dict[Key, _Slot[S]] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def lease(self, target: BmcTarget) -> Iterator[Lease[S]]:
        """Yield a lease on the BMC's live session, logging in first if there is none.

        :raises BmcUnreachable: the BMC's lock stayed taken longer than ``lock_timeout``.
        :raises Exception: whatever ``connect`` raises (nothing is cached then).
        """
        slot = self._slot(key_of(target))
        if not slot.lock.acquire(timeout=self.lock_timeout):
            raise BmcUnreachable(
                f"Redfish at {target.label}: still busy with another call of this "
                f"process after {self.lock_timeout:.0f} s",
                address=target.address,
                port=target.port,
            )
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
        """Log out of the BMC's session, if any (waits for a call in progress)."""
        slot = self._slot(key_of(target))
        with slot.lock:
            self._drop(slot)

    def close_all(self) -> None:
        """Log out of every session (each after its call in progress, if any)."""
        with self._guard:
            slots = list(self._slots.values())
        for slot in slots:
            with slot.lock:
                self._drop(slot)

    def logins(self, target: BmcTarget) -> int:
        """How many times this process logged in to the BMC (for tests and stats)."""
        return self._slot(key_of(target)).logins

    def _slot(self, key: Key) -> _Slot[S]:
        with self._guard:
            return self._slots.setdefault(key, _Slot())

    def _live_session(self, slot: _Slot[S], target: BmcTarget) -> S:
        wanted = fingerprint(target)
        stale = slot.fingerprint != wanted
        idle = self._clock() - slot.last_used > self.idle_timeout
        if slot.session is not None and (stale or idle):
            self._drop(slot)
        if slot.session is None:
            slot.session = self._connect(target)
            slot.fingerprint = wanted
            slot.logins += 1
        return slot.session

    def _drop(self, slot: _Slot[S]) -> None:
        session, slot.session = slot.session, None
        if session is not None:
            self._disconnect(session)
