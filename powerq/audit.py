"""The audit trail: one ``power_events`` row per transition, with who caused it."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from powerq.models import PowerEvent


def record_event(
    session: Session,
    *,
    node_id: int,
    kind: str,
    actor: str,
    message: str | None = None,
    request_id: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
) -> PowerEvent:
    """Add an event to the current transaction (it commits or rolls back with it)."""
    event = PowerEvent(
        node_id=node_id,
        request_id=request_id,
        kind=kind,
        actor=actor,
        message=message,
        detail=detail or {},
    )
    session.add(event)
    return event
