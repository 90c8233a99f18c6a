"""The process-wide IPMI session cache: one pyghmi session per BMC, reused, one user at a time.

A session is keyed by the BMC's address and port, the user name and the login
options (cipher suite, privilege, a fingerprint of Kg): two targets that differ
in any of them never share a session. Each BMC (address, port) has one lock,
held for the whole of a login or command, so one process never runs two
commands, or two sessions, against one BMC at once: logging in with other
options first logs out the BMC's other session (pyghmi itself would hand a
live session to a second login with the same credentials, whatever its
options). With ``cipher_suite`` "auto", the suite that worked is remembered per
BMC and proposed alone at the next login (if it stops working, the next login
negotiates again), so a suite-3 BMC costs the fallback once. Sessions idle longer than
``idle_timeout`` are logged out (checked on every use, and swept across the
cache at most every ``idle_timeout / 2``), returning the BMC's session slots;
a session that failed is dropped and the next use logs in again.

Kept warm across monitor ticks: a BMC forgets a session idle longer than its
own inactivity timeout (typically 60 s), so a cache that holds sessions longer
must keep them alive at the BMC. Given a ``keepalive(session)`` callable (the
IPMI driver passes one Get Device ID, sent once), a daemon thread of the cache
runs it, every :data:`KEEPALIVE_PERIOD_S`, on each session nobody has used on
the wire for :data:`KEEPALIVE_AFTER_S`, under that BMC's lock like any call
(a session in use is skipped: it is alive); a keep-alive that fails drops
the session. The same thread logs out sessions idle past ``idle_timeout``,
which then defaults to two monitor intervals (a session survives a tick and a
late one). Without a keep-alive the idle timeout stays below the BMC's own
(:data:`DEFAULT_IDLE_TIMEOUT`). At most ``max_sessions`` sessions are held; a
login beyond that first logs out the least recently used idle one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from powerq.bmc.base import BmcProtocolError, BmcTarget, BmcUnreachable

DEFAULT_IDLE_TIMEOUT = 20.0  # without keep-alives: below the BMC's own (typically 60 s)
DEFAULT_LOCK_TIMEOUT = 120.0  # a queue of bounded calls ahead of us; beyond this, give up
SWEEP_BATCH = 16  # idle sessions one caller logs out at most
# Sessions one process holds at most: a lane worker of a 10,000-node fleet on
# 8 lanes holds 1,250; the cap bounds memory and BMC slots if lanes are few.
DEFAULT_MAX_SESSIONS = 4096
# Logins one process runs at once. pyghmi 1.6 has hung (every thread parked on
# its global session locks, no CPU) with 32 concurrent cold logins per lane
# worker on a loaded 2-core machine; warm reads at that fanout are fine. A
# login waits its turn for at most the lock timeout.
DEFAULT_MAX_LOGINS = 4
KEEPALIVE_PERIOD_S = 5.0  # how often the keep-alive thread looks for quiet sessions
KEEPALIVE_AFTER_S = 25.0  # quiet on the wire this long: keep alive (BMC forgets after ~60 s)

_log = logging.getLogger(__name__)

AUTO = "auto"

Key = tuple[str, int, str, str, str, str]
Endpoint = tuple[str, int]
Connect = Callable[[BmcTarget], Any]
Disconnect = Callable[[Any], None]
SuiteOf = Callable[[Any], str | None]
Keepalive = Callable[[Any], None]


def kept_alive_idle_timeout() -> float:
    """Idle timeout of a cache that keeps its sessions alive: two monitor intervals
    (``POWERQ_MONITOR_INTERVAL_S``), and never less than :data:`DEFAULT_IDLE_TIMEOUT`.

    :raises ConfigError: a ``POWERQ_*`` variable is malformed.
    """
    from powerq.config import get_settings

    return max(DEFAULT_IDLE_TIMEOUT, 2 * get_settings().monitor_interval_s)


def key_of(target: BmcTarget) -> Key:
    """The cache key of ``target``: address, port, username and the login options."""
    return (
        target.address,
        target.port,
        target.username,
        target.cipher_suite,
        target.privilege,
        _fingerprint(target.kg),
    )


def endpoint_of(target: BmcTarget) -> Endpoint:
    """The BMC itself: (address, port)."""
    return (target.address, target.port)


def _fingerprint(secret: str | None) -> str:
    """A short one-way digest, so keys never hold a secret ("" for none)."""
    if secret is None:
        return ""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def _no_suite(_session: Any) -> str | None:
    return None


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
    lock: threading.Lock
    endpoint: Endpoint
    session: Any = None
    last_used: float = 0.0  # last lease (the idle timeout counts from here)
    last_wire: float = 0.0  # last lease or keep-alive (what the BMC saw last)
    logins: int = 0


class SessionCache:
    """Hands out the one live session of a BMC under that BMC's lock."""

    def __init__(
        self,
        connect: Connect,
        disconnect: Disconnect,
        *,
        idle_timeout: float | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        suite_of: SuiteOf = _no_suite,
        keepalive: Keepalive | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_logins: int = DEFAULT_MAX_LOGINS,
    ) -> None:
        """``suite_of(session)`` names the cipher suite a fresh session uses (None: unknown).

        ``keepalive(session)`` keeps a session alive at its BMC, raising when it
        cannot (see the module docstring); ``idle_timeout`` None:
        :func:`kept_alive_idle_timeout` with one, :data:`DEFAULT_IDLE_TIMEOUT`
        without (read at first use).
        """
        self._connect = connect
        self._disconnect = disconnect
        self._suite_of = suite_of
        self._idle_timeout = idle_timeout
        self._keepalive = keepalive
        self._keeper: threading.Thread | None = None
        self.max_sessions = max_sessions
        self._logins = threading.BoundedSemaphore(max_logins)
        self.lock_timeout = lock_timeout
        self._clock = clock
        self._slots: dict[Key, _Slot] = {}
        self._locks: dict[Endpoint, threading.Lock] = {}
        self._suites: dict[Endpoint, str] = {}
        self._guard = threading.Lock()
        self._held = 0  # live sessions (under _guard)
        self._last_sweep = clock()

    @property
    def idle_timeout(self) -> float:
        """Seconds a session may stay unused before it is logged out."""
        if self._idle_timeout is None:
            keeps = self._keepalive is not None
            self._idle_timeout = kept_alive_idle_timeout() if keeps else DEFAULT_IDLE_TIMEOUT
        return self._idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, seconds: float) -> None:
        self._idle_timeout = seconds

    def held(self) -> int:
        """How many live sessions the cache holds now."""
        with self._guard:
            return self._held

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
            slot.last_used = slot.last_wire = self._clock()
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
        """How many times this process logged in to the BMC with ``target``'s options."""
        return self._slot(key_of(target)).logins

    def known_suite(self, target: BmcTarget) -> str | None:
        """The cipher suite that last worked with this BMC, if a login told us."""
        with self._guard:
            return self._suites.get(endpoint_of(target))

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
            slot = self._slots.get(key)
            if slot is None:
                endpoint = (key[0], key[1])
                lock = self._locks.setdefault(endpoint, threading.Lock())
                slot = self._slots[key] = _Slot(lock, endpoint)
            return slot

    def _siblings(self, slot: _Slot) -> list[_Slot]:
        """The BMC's other slots (other users or options); they share ``slot``'s lock."""
        with self._guard:
            others = self._slots.values()
            return [s for s in others if s.endpoint == slot.endpoint and s is not slot]

    def _all_slots(self) -> list[_Slot]:
        with self._guard:
            return list(self._slots.values())

    def _live_session(self, slot: _Slot, target: BmcTarget) -> Any:
        if self._idle(slot):
            self._drop(slot)
        if slot.session is None:
            for sibling in self._siblings(slot):  # one session per BMC at a time
                self._drop(sibling)
            self._make_room(slot)
            slot.session = self._login_in_turn(target)
            slot.logins += 1
            with self._guard:
                self._held += 1
            self._keep_alive()
        return slot.session

    def _make_room(self, wanted: _Slot) -> None:
        """Log out least recently used idle sessions until a new one fits the cap.

        Sessions in use right now (their lock is taken) are passed over, so the
        cap may be exceeded briefly while every held session is busy.
        """
        if self.held() < self.max_sessions:
            return
        held = [s for s in self._all_slots() if s.session is not None and s is not wanted]
        excess = len(held) + 1 - self.max_sessions
        for slot in sorted(held, key=lambda s: s.last_used):
            if excess <= 0:
                return
            excess -= self._drop_unless_busy(slot)

    def _drop_unless_busy(self, slot: _Slot) -> bool:
        if not slot.lock.acquire(blocking=False):
            return False
        try:
            if slot.session is None:
                return False
            self._drop(slot)
            return True
        finally:
            slot.lock.release()

    def _keep_alive(self) -> None:
        """Start the keep-alive thread of this process, if the cache has a keep-alive
        and the thread is not running (a forked child starts its own)."""
        if self._keepalive is None:
            return
        with self._guard:
            if self._keeper is not None and self._keeper.is_alive():
                return
            self._keeper = threading.Thread(
                target=self._keep_alive_loop, name="powerq-bmc-keepalive", daemon=True
            )
            self._keeper.start()

    def _keep_alive_loop(self) -> None:
        """Every :data:`KEEPALIVE_PERIOD_S`: keep quiet sessions alive, log out idle ones."""
        while True:
            time.sleep(KEEPALIVE_PERIOD_S)
            self.keep_alive_once()

    def keep_alive_once(self) -> int:
        """Keep alive every held session quiet for :data:`KEEPALIVE_AFTER_S` and not in
        use, and log out those idle past ``idle_timeout``; how many were kept alive."""
        kept = 0
        for slot in self._all_slots():
            if slot.session is not None and slot.lock.acquire(blocking=False):
                try:
                    kept += self._keep_or_drop(slot)
                finally:
                    slot.lock.release()
        return kept

    def _keep_or_drop(self, slot: _Slot) -> bool:
        """Under the slot's lock: log out if idle, keep alive if quiet; whether kept alive."""
        if slot.session is None or self._idle(slot):
            self._drop(slot)
            return False
        if self._clock() - slot.last_wire < KEEPALIVE_AFTER_S:
            return False
        assert self._keepalive is not None
        try:
            self._keepalive(slot.session)
        except Exception:  # no answer or a refusal: the next use logs in again
            _log.debug("keep-alive failed; session dropped", exc_info=True)
            self._drop(slot)
            return False
        slot.last_wire = self._clock()
        return True

    def _login_in_turn(self, target: BmcTarget) -> Any:
        """:meth:`_login` once one of ``max_logins`` turns is free.

        :raises BmcUnreachable: no turn came within ``lock_timeout``.
        :raises Exception: whatever ``connect`` raises.
        """
        if not self._logins.acquire(timeout=self.lock_timeout):
            raise BmcUnreachable(
                f"IPMI at {target.label}: no login turn after {self.lock_timeout:.0f} s",
                address=target.address,
                port=target.port,
            )
        try:
            return self._login(target)
        finally:
            self._logins.release()

    def _login(self, target: BmcTarget) -> Any:
        """Log in; with "auto", propose the suite that worked last time first.

        :raises Exception: whatever ``connect`` raises.
        """
        endpoint = endpoint_of(target)
        known = self.known_suite(target) if target.cipher_suite == AUTO else None
        if known is None:
            session = self._connect(target)
        else:
            try:
                session = self._connect(dataclasses.replace(target, cipher_suite=known))
            except BmcProtocolError:  # the BMC changed (firmware, settings): negotiate again
                with self._guard:
                    self._suites.pop(endpoint, None)
                session = self._connect(target)
        suite = self._suite_of(session)
        if suite is not None:
            with self._guard:
                self._suites[endpoint] = suite
        return session

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
            with self._guard:
                self._held -= 1
            self._disconnect(session)
