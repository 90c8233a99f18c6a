"""Helpers for batch tests: arrange requests, finish them as a worker would."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from powerq.batches import BatchSpec, CreatedBatch, create_batch, pump
from powerq.db import session_scope
from powerq.models import BatchMember, PowerRequest
from powerq.states import Action, RequestStatus


def spec(
    action: Action = Action.OFF, nodes: Iterable[str] | None = None, **options: object
) -> BatchSpec:
    """A batch spec for named nodes (or a ``selector=Selector(...)``)."""
    if nodes is not None:
        options["nodes"] = tuple(nodes)
    return BatchSpec(action=action, **options)  # type: ignore[arg-type]


def create(session: Session, batch_spec: BatchSpec, actor: str = "ops") -> CreatedBatch:
    """Create and commit a batch."""
    created = create_batch(session, batch_spec, actor=actor)
    session.commit()
    return created


def requests_of(batch_id: uuid.UUID) -> list[PowerRequest]:
    """The batch's own requests, in batch order (by member position)."""
    with session_scope() as s:
        return list(
            s.scalars(
                select(PowerRequest)
                .join(BatchMember, BatchMember.request_id == PowerRequest.id)
                .where(PowerRequest.batch_id == batch_id, BatchMember.batch_id == batch_id)
                .order_by(BatchMember.position)
            )
        )


def released(batch_id: uuid.UUID) -> list[str]:
    """Names of the batch's released (not held) requests, in batch order."""
    return [r.node.name for r in requests_of(batch_id) if not r.held]


def finish(
    request_ids: Iterable[uuid.UUID], status: RequestStatus = RequestStatus.SUCCEEDED
) -> None:
    """Mark requests finished, as the executor's finish() would."""
    with session_scope() as s:
        s.execute(
            update(PowerRequest)
            .where(PowerRequest.id.in_(list(request_ids)))
            .values(status=status, finished_at=datetime.now().astimezone(), lease_expires_at=None)
        )


def pump_now() -> list[str]:
    """Run the pump in its own transaction; return the released node names."""
    with session_scope() as s:
        return [release.node_name for release in pump(s)]
