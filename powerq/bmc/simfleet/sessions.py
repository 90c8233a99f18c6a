"""RMCP+ sessions held by one simulated BMC: creation, lookup, idle expiry, limits."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from powerq.bmc.simfleet.crypto import CipherSuite, SessionKeys

PRIV_USER = 2
PRIV_OPERATOR = 3
PRIV_ADMIN = 4
DEFAULT_MAX_SESSIONS = 32
DEFAULT_IDLE_TIMEOUT = 60.0  # seconds, the IPMI default session inactivity timeout
PENDING_TIMEOUT = 10.0  # a handshake not finished by then is forgotten


@dataclass
class Session:
    """One RMCP+ session. ``console_id`` is SIDm, ``bmc_id`` is SIDc (spec naming)."""

    console_id: int
    bmc_id: int
    suite: CipherSuite
    max_privilege: int
    last_seen: float
    rm: bytes = b""
    rc: bytes = b""
    role: int = 0
    username: bytes = b""
    keys: SessionKeys | None = None
    privilege: int = PRIV_USER
    out_seq: int = 0
    last_exchange: tuple[bytes, bytes] | None = None  # (request, response) messages

    @property
    def active(self) -> bool:
        """Whether RAKP 3/4 completed and the session carries IPMI messages."""
        return self.keys is not None

    def next_sequence(self) -> int:
        """The next outbound session sequence number (starts at 1, skips 0 on wrap)."""
        self.out_seq = self.out_seq % 0xFFFFFFFF + 1
        return self.out_seq


class SessionTable:
    """The sessions of one BMC, keyed by the BMC-side session id."""

    def __init__(
        self, max_sessions: int = DEFAULT_MAX_SESSIONS, idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    ) -> None:
        self._sessions: dict[int, Session] = {}
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.opened_total = 0  # sessions that completed RAKP 4

    def create(
        self, console_id: int, suite: CipherSuite, max_privilege: int, now: float
    ) -> Session | None:
        """Start a session (Open Session); None when the table is full."""
        self.expire(now)
        if len(self._sessions) >= self.max_sessions:
            return None
        session = Session(console_id, self._fresh_id(), suite, max_privilege, now)
        self._sessions[session.bmc_id] = session
        return session

    def get(self, bmc_id: int, now: float) -> Session | None:
        """The live session with this id, touched as active now; None if unknown."""
        session = self._sessions.get(bmc_id)
        if session is not None:
            session.last_seen = now
        return session

    def activate(self, session: Session, keys: SessionKeys) -> None:
        """Mark the handshake complete (RAKP 4 sent)."""
        if not session.active:
            self.opened_total += 1
        session.keys = keys

    def close(self, bmc_id: int) -> bool:
        """Forget a session; whether it existed."""
        return self._sessions.pop(bmc_id, None) is not None

    def expire(self, now: float) -> None:
        """Drop sessions idle too long and handshakes left unfinished."""
        for bmc_id, session in list(self._sessions.items()):
            limit = self.idle_timeout if session.active else PENDING_TIMEOUT
            if now - session.last_seen > limit:
                del self._sessions[bmc_id]

    def count_active(self) -> int:
        """Sessions that finished the handshake and have not closed or expired."""
        return sum(1 for session in self._sessions.values() if session.active)

    def clear(self) -> None:
        """Drop every session (e.g. the BMC "rebooted")."""
        self._sessions.clear()

    def _fresh_id(self) -> int:
        """A random non-zero id not in use.

        :raises RuntimeError: 64 random draws all collided (cannot happen in practice).
        """
        for _ in range(64):
            candidate: int = struct.unpack("<I", os.urandom(4))[0]
            if candidate and candidate not in self._sessions:
                return candidate
        raise RuntimeError("could not draw a free session id")
