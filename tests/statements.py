"""Counting the SQL statements a piece of code sends (statement budgets as tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event

from powerq.db import get_engine


@contextlib.contextmanager
def count_statements() -> Iterator[list[str]]:
    """Collect every statement sent through powerq's engine while inside (the list
    grows as they run). Counts, never timings: BEGIN/COMMIT are not statements
    here (the driver sends them, not a cursor), nor is the pool's ping."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)
