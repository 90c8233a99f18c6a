"""The executor: one ``powerq.step`` task run carries a request one step further.

A run claims the request (fenced attempt), then performs steps while the next
one is due at once: query the BMC, send the command if needed, check. When the
hardware needs time, the next check is scheduled on the same lane with backoff
and the run returns, so a lane never waits on hardware. The executor is dumb:
it does what the request says and records success or failure in PostgreSQL.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from powerq.bmc import driver_for
from powerq.bmc.base import BmcError, PowerDriver
from powerq.config import get_settings
from powerq.db import db_now, session_scope
from powerq.errors import ConfigError
from powerq.states import (
    DEFAULT_DEADLINE_S,
    SEND_ONCE_ACTIONS,
    Action,
    PowerState,
    RequestStatus,
    Step,
    command_for,
    needs_command,
)
from powerq.tasks import batch_pump, leases, verify
from powerq.tasks.app import app
from powerq.tasks.dispatch import send_step
from powerq.tasks.leases import Claim

log = logging.getLogger(__name__)

MAX_TRANSIENT_ERRORS = 4
# Steps that are due at once run back to back in one task run (query → send →
# first check is the common path); anything that waits goes back to the lane.
MAX_STEPS_PER_RUN = 4


@dataclass(frozen=True)
class Next:
    """Carry on with ``step`` after ``delay_s`` (0: now, in this run)."""

    step: Step
    delay_s: float
    values: dict[str, object]


@dataclass(frozen=True)
class Done:
    """Close the request."""

    status: RequestStatus
    error: str | None = None
    observed: PowerState | None = None


@dataclass(frozen=True)
class Fenced:
    """A newer attempt owns the request: stop without writing anything."""


Outcome = Next | Done | Fenced


@app.task(  # type: ignore[untyped-decorator]
    name="powerq.step",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=10,
)
def step(request_id: str) -> None:
    """Carry request ``request_id`` one step further (the message holds only the id)."""
    run_request(uuid.UUID(request_id))


def run_request(request_id: uuid.UUID) -> None:
    """Claim the request and run its due steps; a request not ours to run is left alone.

    :raises sqlalchemy.exc.OperationalError: the database is unreachable (the
        task retries; the sweeper re-dispatches if it stays down).
    """
    settings = get_settings()
    try:
        c = leases.claim(request_id, settings.lease_s)
    except ConfigError as exc:
        log.error("request %s cannot run: %s", request_id, exc)
        return
    if c is None:
        log.debug("request %s not claimable (finished, leased or not due)", request_id)
        return
    driver = driver_for(c.target)
    for _ in range(MAX_STEPS_PER_RUN):
        outcome = perform(c, driver)
        if isinstance(outcome, Fenced):
            return
        if isinstance(outcome, Done):
            leases.finish(
                c,
                outcome.status,
                error=outcome.error,
                observed=outcome.observed,
                fault_threshold=settings.fault_threshold,
            )
            batch_pump.ring(c.request_id)  # a batch waiting on this request may go on
            return
        advanced = leases.advance(
            c, delay_s=outcome.delay_s, next_step=outcome.step, **outcome.values
        )
        if advanced is None:
            return  # a newer attempt owns the request now
        if outcome.delay_s > 0:
            _schedule(advanced, outcome.delay_s)
            return
        c = advanced
    _schedule(c, 0.01)


def _schedule(c: Claim, delay_s: float) -> None:
    """Ring the lane again; if Redis is down, the sweeper finds the expired lease."""
    try:
        send_step(c.request_id, c.node_name, countdown=delay_s)
    except Exception as exc:  # broker errors of any transport
        log.warning("could not schedule next step of %s (sweeper will): %s", c.request_id, exc)


def perform(c: Claim, driver: PowerDriver) -> Outcome:
    """Run the claim's next step against the BMC and say what follows."""
    step_to_run = c.next_step
    if c.command_sent_at is not None and step_to_run is not Step.CHECK:
        # Sent already, maybe by an attempt that crashed before it could record
        # the next step: check. A cycle/reset is never sent again; an on/off
        # is re-sent by the check only if it shows no effect (verify.should_resend).
        step_to_run = Step.CHECK
    try:
        if step_to_run is Step.QUERY:
            return _query(c, driver)
        if step_to_run is Step.SEND:
            return _send(c, driver)
        return _check(c, driver)
    except BmcError as exc:
        return _bmc_error(c, step_to_run, exc)
    except SoftTimeLimitExceeded:
        return _bmc_error(c, step_to_run, TimeoutError(f"step timed out on {c.target.label}"))


def _read(c: Claim, driver: PowerDriver) -> tuple[PowerState, datetime]:
    """Read the power state and record it as observed (verified BMC reads only)."""
    state = driver.get_power_state()
    return state, leases.record_observation(c.node_id, state)


def _query(c: Claim, driver: PowerDriver) -> Outcome:
    state, _ = _read(c, driver)
    if c.action is Action.QUERY:
        return Done(RequestStatus.SUCCEEDED, observed=state)
    if not needs_command(c.action, state):
        return Done(RequestStatus.SUCCEEDED, observed=state)  # already there: nothing sent
    return Next(Step.SEND, 0, {"observed_before": state, "transient_errors": 0})


def _send(c: Claim, driver: PowerDriver) -> Outcome:
    command = command_for(c.action, c.observed_before or PowerState.UNKNOWN)
    if leases.mark_command_sent(c, command) is None:
        return Fenced()
    driver.send_power_action(command)
    return Next(Step.CHECK, verify.check_delay(0), {"checks": 0, "transient_errors": 0})


def _resend(c: Claim, driver: PowerDriver) -> Outcome:
    """Send an on/off again that showed no effect (its packet may have been lost)."""
    if leases.mark_command_sent(c, c.command_sent or c.action) is None:
        return Fenced()
    driver.send_power_action(c.command_sent or c.action)
    return Next(Step.CHECK, verify.check_delay(0), {"checks": 0, "transient_errors": 0})


def _send_fallback(c: Claim, driver: PowerDriver, now: datetime) -> Outcome:
    """soft_off ran out of time and a fallback was asked for: send a hard off once."""
    if leases.mark_command_sent(c, Action.OFF, fallback=True) is None:
        return Fenced()
    driver.send_power_action(Action.OFF)
    deadline = now + timedelta(seconds=DEFAULT_DEADLINE_S[Action.OFF])
    return Next(Step.CHECK, verify.check_delay(0), {"checks": 0, "deadline_at": deadline})


def _check(c: Claim, driver: PowerDriver) -> Outcome:
    state, read_at = _read(c, driver)
    seen = c.transition_seen_at
    if seen is None and verify.is_transition(c.command_sent, state):
        seen = read_at
    verdict = verify.check_verdict(
        c.action,
        c.command_sent,
        state,
        now=read_at,
        deadline_at=c.deadline_at,
        command_sent_at=c.command_sent_at,
        transition_seen_at=seen,
        soft_fallback=c.soft_fallback,
        fallback_sent=c.fallback_sent_at is not None,
    )
    if verdict is verify.Verdict.VERIFIED:
        return Done(RequestStatus.SUCCEEDED, observed=state)
    if verdict is verify.Verdict.FALLBACK:
        return _send_fallback(c, driver, read_at)
    if verdict is verify.Verdict.WAIT and verify.should_resend(
        c.action, state, c.observed_before, c.command_sent_at, read_at
    ):
        return _resend(c, driver)
    if verdict is verify.Verdict.EXPIRED:
        deadline_s = (c.deadline_at - c.started_at).total_seconds()
        return Done(
            RequestStatus.FAILED, verify.expired_message(c.action, state, deadline_s), state
        )
    return Next(
        Step.CHECK,
        verify.check_delay(c.checks + 1),
        {"checks": c.checks + 1, "transition_seen_at": seen},
    )


def _bmc_error(c: Claim, step_run: Step, exc: Exception) -> Outcome:
    """Retry transient errors with backoff (bounded); fail on permanent ones."""
    transient = isinstance(exc, TimeoutError) or getattr(exc, "transient", False)
    if not transient:
        return Done(RequestStatus.FAILED, error=f"{c.action.value} failed: {exc}")
    if step_run is Step.SEND and c.action in SEND_ONCE_ACTIONS:
        return Done(
            RequestStatus.FAILED,
            error=(
                f"{c.action.value} was sent once but the BMC did not acknowledge it ({exc}); "
                "it is not resent, to avoid a second cycle: check the machine"
            ),
        )
    errors = c.transient_errors + 1
    if errors > MAX_TRANSIENT_ERRORS or _db_now() >= c.deadline_at:
        return Done(
            RequestStatus.FAILED,
            error=f"BMC unreachable after {errors} attempts: {exc}",
        )
    # A send that got no answer may still have reached the BMC: check (and let
    # should_resend decide) rather than query and send straight away.
    retry_step = Step.CHECK if step_run is Step.SEND else step_run
    return Next(retry_step, verify.retry_delay(errors), {"transient_errors": errors})


def _db_now() -> datetime:
    """PostgreSQL's clock: leases and deadlines are all compared against it."""
    with session_scope() as session:
        now = db_now(session)
    return now
