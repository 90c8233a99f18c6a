"""Driving the executor in-process: steps run here as lane workers would run them,
against the in-process sim driver (see :func:`machine` in conftest.py)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from powerq.bmc.sim import SimPowerDriver
from powerq.intents import request_power
from powerq.models import Node, PowerRequest
from powerq.states import Action, BootDevice, RequestStatus
from powerq.tasks import steps

MAX_STEPS = 40


def request_for(
    session: Session,
    node: Node,
    action: Action,
    *,
    boot_device: BootDevice | None = None,
) -> uuid.UUID:
    """A committed request (no message is sent: the test drives it)."""
    intent = request_power(session, node, action, actor="test", boot_device=boot_device)
    session.commit()
    return intent.request.id


def make_due(session: Session, request_id: uuid.UUID, *, sent_ago_s: float = 0.0) -> None:
    """Expire the lease (a new worker may claim), optionally ageing the last send."""
    values: dict[str, object] = {"lease_expires_at": func.now() - timedelta(seconds=5)}
    if sent_ago_s:
        values["command_sent_at"] = PowerRequest.command_sent_at - timedelta(seconds=sent_ago_s)
    session.execute(update(PowerRequest).where(PowerRequest.id == request_id).values(**values))
    session.commit()


def drive(session: Session, request_id: uuid.UUID, *, sent_ago_s: float = 0.0) -> PowerRequest:
    """Run steps as lane workers would, until the request is finished (bounded)."""
    for _ in range(MAX_STEPS):
        steps.run_request(request_id)
        session.expire_all()
        request = session.get(PowerRequest, request_id)
        assert request is not None
        if request.status in (RequestStatus.SUCCEEDED, RequestStatus.FAILED):
            return request
        make_due(session, request_id, sent_ago_s=sent_ago_s)
    raise AssertionError(f"request {request_id} did not finish in {MAX_STEPS} steps")


def executed(sim: SimPowerDriver) -> list[Action]:
    """The power actions the sim BMC accepted, in order."""
    return [action for _, action in sim.sent]
