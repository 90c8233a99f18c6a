"""Redfish sessions of one simulated BMC: tokens handed out at login, bounded and expiring.

The Redfish counterpart of :mod:`.sessions` (RMCP+): at most :data:`MAX_SESSIONS`
live at once (a login beyond that is refused, as a real BMC's
``SessionLimitExceeded``), and a session unused for :data:`IDLE_TIMEOUT_S`
is forgotten (its token then gets 401).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

MAX_SESSIONS = 64
IDLE_TIMEOUT_S = 600.0


@dataclass
class HttpSession:
    """One logged-in client: its id (the last path segment of its URI) and token."""

    id: int
    token: str
    username: str
    last_used: float


class TokenTable:
    """The live sessions of one BMC, by token."""

    def __init__(self, limit: int = MAX_SESSIONS, idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.opened_total = 0
        self._by_token: dict[str, HttpSession] = {}
        self._next_id = 1

    def open(self, username: str, now: float) -> HttpSession | None:
        """A new session, or None when :attr:`limit` sessions are live."""
        self.expire(now)
        if len(self._by_token) >= self.limit:
            return None
        session = HttpSession(self._next_id, secrets.token_hex(16), username, now)
        self._next_id += 1
        self._by_token[session.token] = session
        self.opened_total += 1
        return session

    def by_token(self, token: str, now: float) -> HttpSession | None:
        """The live session holding ``token`` (its idle clock restarts), or None."""
        session = self._by_token.get(token)
        if session is None or now - session.last_used > self.idle_timeout:
            self._by_token.pop(token, None)
            return None
        session.last_used = now
        return session

    def by_id(self, session_id: int) -> HttpSession | None:
        """The live session numbered ``session_id``, or None."""
        return next((s for s in self._by_token.values() if s.id == session_id), None)

    def close(self, session_id: int) -> bool:
        """Log a session out; False when there was none with that id."""
        session = self.by_id(session_id)
        if session is None:
            return False
        del self._by_token[session.token]
        return True

    def ids(self, now: float) -> list[int]:
        """The ids of the live sessions, oldest first."""
        self.expire(now)
        return sorted(s.id for s in self._by_token.values())

    def expire(self, now: float) -> None:
        """Forget every session idle for longer than :attr:`idle_timeout`."""
        stale = [t for t, s in self._by_token.items() if now - s.last_used > self.idle_timeout]
        for token in stale:
            del self._by_token[token]

    def count_active(self) -> int:
        """How many sessions are live (expired ones are not counted once expired)."""
        return len(self._by_token)
