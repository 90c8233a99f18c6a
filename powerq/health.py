"""A node's power health: failure count, ``last_error`` and ``power_fault``.

A node that fails ``POWERQ_FAULT_THRESHOLD`` requests in a row is put in
``power_fault`` with the reason; the next verified success clears it. The
executor does both in its finish statement (``tasks/leases.py``);
:func:`record_failure` is the same rule for failures decided outside it (the
sweeper, an unrunnable request), in the caller's transaction.
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from powerq.audit import record_event
from powerq.db import db_now
from powerq.models import Node
from powerq.states import Evidence

# What a success event says, by what showed it: never more than was seen.
SUCCESS_WORDING: dict[Evidence | None, str] = {
    Evidence.POWER_STATE: "verified: the BMC reports the target state",
    Evidence.ALREADY: "verified: the BMC already reported the target state, nothing sent",
    Evidence.OFF_THEN_ON: "verified: the BMC reported off, then on",
    Evidence.ACKNOWLEDGED: "acknowledged by the BMC; it cannot be read back, so not verified",
    Evidence.BOOT_DEVICE: "verified: the BMC reports the boot device that was set",
    Evidence.READ: "read from the BMC",
    None: "succeeded",
}


def record_failure(
    session: Session,
    node: Node,
    *,
    request_id: uuid.UUID | None,
    error: str | None,
    threshold: int,
    actor: str,
) -> None:
    """A failed request: count it, keep the error, and raise a fault at ``threshold``."""
    node.consecutive_failures += 1
    node.last_error = error
    record_event(
        session, node_id=node.id, request_id=request_id, kind="failed", actor=actor, message=error
    )
    if node.consecutive_failures < threshold or node.power_fault:
        return
    node.power_fault = True
    node.power_fault_reason = (
        f"{node.consecutive_failures} consecutive failed power requests; last: {error}"
    )
    node.power_fault_at = db_now(session)
    record_event(
        session,
        node_id=node.id,
        request_id=request_id,
        kind="power_fault",
        actor=actor,
        message=node.power_fault_reason,
    )
