"""A run that goes on for longer than half its lease renews it: no other worker can
take the request over while the run is still talking to the BMC."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.orm import Session

from powerq.bmc.sim import SimPowerDriver
from powerq.config import get_settings
from powerq.models import Node, PowerRequest
from powerq.states import Action, PowerState, RequestStatus
from powerq.tasks import leases, steps
from tests.execution.inprocess import executed, request_for

LEASE_S = 3.0  # far below the default, so that a short transition outlasts it


def test_a_run_longer_than_its_lease_keeps_it(
    session: Session, machine: tuple[Node, SimPowerDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, sim = machine
    sim.transition = 3.8  # polled for ~4 s: longer than the lease
    short = get_settings().model_copy(update={"lease_s": LEASE_S})
    monkeypatch.setattr(steps, "get_settings", lambda: short)
    request_id = request_for(session, node, Action.OFF)

    started = time.monotonic()
    rivals: list[leases.Claim | None] = []

    def pause_and_try_a_takeover(delay_s: float) -> None:
        time.sleep(delay_s)
        if time.monotonic() - started > LEASE_S + 0.5:  # the claim's lease alone has run out
            rivals.append(leases.claim(request_id, lease_s=60))

    monkeypatch.setattr(steps, "pause", pause_and_try_a_takeover)
    steps.run_request(request_id)

    session.expire_all()
    request = session.get(PowerRequest, request_id)
    assert request is not None and request.status is RequestStatus.SUCCEEDED, request.error
    assert rivals and rivals == [None] * len(rivals)  # every takeover found the lease held
    assert request.attempt == 1 and executed(sim) == [Action.OFF]
    assert request.observed_after is PowerState.OFF
