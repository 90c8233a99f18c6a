"""The per-BMC command log: what arrived, when, and the transition it started.

Tests read it (through the control API) to prove that no two power
operations on one machine ever overlapped.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_LOG_LIMIT = 2000  # entries kept per BMC; the oldest are dropped first


@dataclass
class LogEntry:
    """One command received by a simulated BMC.

    ``received_at``, ``transition_start`` and ``transition_end`` are wall-clock
    (``time.time()``) seconds so they compare across processes.
    """

    seq: int
    received_at: float
    command: str
    session_id: int | None = None
    action: str | None = None
    completion_code: int = 0
    detail: str = ""
    transition_start: float | None = None
    transition_end: float | None = None
    overlapped: bool = False
    superseded: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


class CommandLog:
    """A bounded, append-only list of :class:`LogEntry` with a running sequence number."""

    def __init__(
        self, limit: int = DEFAULT_LOG_LIMIT, wall: Callable[[], float] = time.time
    ) -> None:
        self._entries: collections.deque[LogEntry] = collections.deque(maxlen=limit)
        self._seq = 0
        self.wall = wall

    def record(self, command: str, session_id: int | None = None, **fields: Any) -> LogEntry:
        """Append a new entry stamped with the current wall-clock time and return it."""
        self._seq += 1
        entry = LogEntry(self._seq, self.wall(), command, session_id, **fields)
        self._entries.append(entry)
        return entry

    def entries(self) -> list[LogEntry]:
        """The retained entries, oldest first."""
        return list(self._entries)

    def reset(self) -> None:
        """Forget every entry (the sequence number keeps counting)."""
        self._entries.clear()
