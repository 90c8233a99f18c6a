"""Honest outcomes, step by step in-process: report only what the BMC showed.

The executor's step functions run here against the in-process sim driver, a
worker "dies" (a BaseException no step code catches) at chosen points, and the
request is then re-claimed as a new worker would after its lease expired. What
the BMC executed is read from the sim driver's own record (``sent``).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, update
from sqlalchemy.orm import Session

from powerq.bmc.base import BmcAckUnknown, BmcTarget, BmcUnreachable, PowerDriver
from powerq.bmc.sim import SimPowerDriver
from powerq.config import get_settings
from powerq.intents import request_power
from powerq.models import Node, PowerEvent, PowerRequest
from powerq.states import Action, Evidence, PowerState, RequestStatus
from powerq.tasks import leases, steps
from tests.execution.inprocess import drive, executed, make_due, request_for

ON, OFF = PowerState.ON, PowerState.OFF


class WorkerDied(BaseException):
    """The worker process vanished here (SIGKILL): nothing after this point ran."""


class DiesAt(PowerDriver):
    """Wraps a driver; the worker dies just before or just after the first send."""

    def __init__(self, inner: PowerDriver, when: str) -> None:
        self.inner, self.when = inner, when

    def get_power_state(self) -> PowerState:
        return self.inner.get_power_state()

    def send_power_action(self, action: Action) -> None:
        if self.when == "before_send":
            raise WorkerDied
        self.inner.send_power_action(action)
        raise WorkerDied  # after the BMC executed it, before its answer was recorded


class AnswerLost(PowerDriver):
    """The BMC executes every command, but its answer never arrives."""

    def __init__(self, inner: PowerDriver) -> None:
        self.inner = inner

    def get_power_state(self) -> PowerState:
        return self.inner.get_power_state()

    def send_power_action(self, action: Action) -> None:
        self.inner.send_power_action(action)
        raise BmcAckUnknown("no answer: it may or may not have run")


def _die_once(monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """The next run's worker dies at ``when``; later runs are healthy workers."""
    real = steps.driver_for

    def dying(target: BmcTarget) -> PowerDriver:
        monkeypatch.setattr(steps, "driver_for", real)
        return DiesAt(real(target), when)

    monkeypatch.setattr(steps, "driver_for", dying)


def test_a_cycle_is_off_verified_then_on_verified(
    session: Session, machine: tuple[Node, SimPowerDriver]
) -> None:
    node, sim = machine
    done = drive(session, request_for(session, node, Action.CYCLE))
    assert done.status is RequestStatus.SUCCEEDED
    assert done.evidence == Evidence.OFF_THEN_ON
    assert executed(sim) == [Action.OFF, Action.ON]
    assert done.transition_seen_at is not None and done.command_acked_at is not None


def test_a_reset_is_reported_acknowledged_never_verified(
    session: Session, machine: tuple[Node, SimPowerDriver]
) -> None:
    node, sim = machine
    done = drive(session, request_for(session, node, Action.RESET))
    assert done.status is RequestStatus.SUCCEEDED
    assert done.evidence == Evidence.ACKNOWLEDGED
    assert done.command_acked_at is not None
    assert executed(sim) == [Action.RESET]
    [event] = session.query(PowerEvent).filter_by(request_id=done.id, kind="succeeded").all()
    assert "acknowledged" in (event.message or "") and "not verified" in (event.message or "")


@pytest.mark.parametrize(("when", "executions"), [("before_send", 0), ("after_send", 1)])
def test_a_reset_whose_worker_died_is_reported_unknown(
    session: Session,
    machine: tuple[Node, SimPowerDriver],
    monkeypatch: pytest.MonkeyPatch,
    when: str,
    executions: int,
) -> None:
    node, sim = machine
    request_id = request_for(session, node, Action.RESET)
    _die_once(monkeypatch, when)
    with pytest.raises(WorkerDied):
        steps.run_request(request_id)
    session.expire_all()
    marked = session.get(PowerRequest, request_id)
    assert marked is not None and marked.status is RequestStatus.RUNNING
    assert marked.command_sent_at is not None and marked.command_acked_at is None

    done = drive(session, request_id)

    assert executed(sim) == [Action.RESET] * executions  # never sent again
    assert done.status is RequestStatus.FAILED
    assert done.evidence is None
    assert "may or may not have happened" in (done.error or "")
    session.refresh(node)
    assert node.last_error == done.error


@pytest.mark.parametrize(
    ("when", "executed_at_death", "sent_ago_s"),
    [
        # the off reached the BMC: the re-claim reads off and goes on with the on phase
        ("after_send", [Action.OFF], 0.0),
        # it never went out: the re-claim checks first; only an unanswered command with
        # no effect for RESEND_AFTER is taken as lost and sent (the send is aged instead
        # of waiting)
        ("before_send", [], 25.0),
    ],
)
def test_a_cycle_whose_worker_died_around_the_off_executes_each_phase_once(
    session: Session,
    machine: tuple[Node, SimPowerDriver],
    monkeypatch: pytest.MonkeyPatch,
    when: str,
    executed_at_death: list[Action],
    sent_ago_s: float,
) -> None:
    node, sim = machine
    request_id = request_for(session, node, Action.CYCLE)
    _die_once(monkeypatch, when)
    with pytest.raises(WorkerDied):
        steps.run_request(request_id)
    assert executed(sim) == executed_at_death

    done = drive(session, request_id, sent_ago_s=sent_ago_s)

    assert done.status is RequestStatus.SUCCEEDED and done.evidence == Evidence.OFF_THEN_ON
    assert executed(sim) == [Action.OFF, Action.ON]


def test_an_unanswered_off_is_settled_by_reading_not_by_resending(
    session: Session, machine: tuple[Node, SimPowerDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, sim = machine
    real = steps.driver_for
    monkeypatch.setattr(steps, "driver_for", lambda target: AnswerLost(real(target)))
    done = drive(session, request_for(session, node, Action.OFF))
    assert done.status is RequestStatus.SUCCEEDED and done.evidence == Evidence.POWER_STATE
    assert done.command_acked_at is None
    assert executed(sim) == [Action.OFF]


def test_an_unanswered_reset_is_failed_as_unknown_and_not_resent(
    session: Session, machine: tuple[Node, SimPowerDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, sim = machine
    real = steps.driver_for
    monkeypatch.setattr(steps, "driver_for", lambda target: AnswerLost(real(target)))
    done = drive(session, request_for(session, node, Action.RESET))
    assert done.status is RequestStatus.FAILED
    assert "may or may not have happened" in (done.error or "")
    assert executed(sim) == [Action.RESET]


def test_an_undecryptable_password_fails_the_request_at_once_with_the_cause(
    session: Session, machine: tuple[Node, SimPowerDriver]
) -> None:
    node, sim = machine
    request_id = request_for(session, node, Action.OFF)
    session.execute(
        update(Node).where(Node.id == node.id).values(bmc_password_encrypted=b"not-a-token")
    )
    session.commit()

    steps.run_request(request_id)

    session.expire_all()
    request = session.get(PowerRequest, request_id)
    assert request is not None and request.status is RequestStatus.FAILED
    assert "POWERQ_SECRET_KEY" in (request.error or "")
    session.refresh(node)
    assert node.last_error == request.error
    assert not node.power_fault  # a key problem is not the BMC's fault
    assert executed(sim) == []


def test_a_driver_not_enabled_here_fails_the_request_at_once_saying_so(
    session: Session, machine: tuple[Node, SimPowerDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, sim = machine
    request_id = request_for(session, node, Action.OFF)
    monkeypatch.setenv("POWERQ_DRIVERS", "ipmi")  # this host does not run the sim driver
    get_settings.cache_clear()
    try:
        steps.run_request(request_id)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

    session.expire_all()
    request = session.get(PowerRequest, request_id)
    assert request is not None and request.status is RequestStatus.FAILED
    assert "the sim driver is not enabled on this host (POWERQ_DRIVERS=ipmi)" in (
        request.error or ""
    )
    session.refresh(node)
    assert node.last_error == request.error
    assert executed(sim) == []


def test_a_stale_attempts_observation_changes_nothing(
    session: Session, machine: tuple[Node, SimPowerDriver]
) -> None:
    node, _ = machine
    request_id = request_for(session, node, Action.QUERY)
    stale = leases.claim(request_id, lease_s=60)
    assert stale is not None
    make_due(session, request_id)
    fresh = leases.claim(request_id, lease_s=60)
    assert fresh is not None

    assert leases.record_observation(fresh, OFF, lease_s=60) is not None
    # a zombie's late read
    assert leases.record_observation(stale.at_now(), ON, lease_s=60) is None

    session.refresh(node)
    assert node.power_state is OFF


class FirstOffUnsent(PowerDriver):
    """The first hard off cannot be sent at all (no session); later ones go out."""

    def __init__(self, inner: PowerDriver) -> None:
        self.inner, self.failed = inner, False

    def get_power_state(self) -> PowerState:
        return self.inner.get_power_state()

    def send_power_action(self, action: Action) -> None:
        if action is Action.OFF and not self.failed:
            self.failed = True
            raise BmcUnreachable("no session: nothing sent")
        self.inner.send_power_action(action)


def test_a_soft_off_fallback_that_could_not_be_sent_is_retried_as_the_hard_off(
    session: Session, machine: tuple[Node, SimPowerDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, sim = machine
    sim.soft_delay = None  # the OS ignores ACPI: only the fallback can turn it off
    wrapper = FirstOffUnsent(sim)
    monkeypatch.setattr(steps, "driver_for", lambda target: wrapper)
    intent = request_power(session, node, Action.SOFT_OFF, actor="test", soft_fallback=True)
    session.commit()
    request_id = intent.request.id
    steps.run_request(request_id)  # query, soft-off sent, first check scheduled
    session.execute(  # the soft-off's deadline passes
        update(PowerRequest)
        .where(PowerRequest.id == request_id)
        .values(deadline_at=func.now() - timedelta(seconds=1))
    )
    session.commit()

    done = drive(session, request_id)

    assert done.status is RequestStatus.SUCCEEDED, done.error
    assert executed(sim) == [Action.SOFT_OFF, Action.OFF]  # never a second soft-off
