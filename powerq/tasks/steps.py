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
from powerq.bmc.base import BmcAckUnknown, BmcError, PowerDriver
from powerq.config import get_settings
from powerq.db import db_now, session_scope
from powerq.states import (
    DEFAULT_DEADLINE_S,
    Action,
    BootDevice,
    DriverKind,
    Evidence,
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
    acked: bool = False  # the BMC answered the command this step sent


@dataclass(frozen=True)
class Done:
    """Close the request."""

    status: RequestStatus
    error: str | None = None
    observed: PowerState | None = None
    evidence: Evidence | None = None  # what showed a success; never more than was seen
    acked: bool = False  # the BMC answered the command this step sent


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
    c = leases.claim(request_id, settings.lease_s)
    if c is None:
        log.debug("request %s not claimable (finished, leased, not due or unrunnable)", request_id)
        return
    try:
        driver = _driver(c, settings.drivers)
    except (NotImplementedError, ValueError, BmcError) as exc:
        _close(c, Done(RequestStatus.FAILED, f"cannot drive BMC {c.target.label}: {exc}"))
        return
    for _ in range(MAX_STEPS_PER_RUN):
        outcome = perform(c, driver)
        if isinstance(outcome, Fenced):
            return
        if isinstance(outcome, Done):
            _close(c, outcome)
            return
        advanced = leases.advance(
            c,
            delay_s=outcome.delay_s,
            next_step=outcome.step,
            acked=outcome.acked,
            **outcome.values,
        )
        if advanced is None:
            return  # a newer attempt owns the request now
        if outcome.delay_s > 0:
            _schedule(advanced, outcome.delay_s)
            return
        c = advanced
    _schedule(c, 0.01)


def _driver(c: Claim, enabled: tuple[DriverKind, ...]) -> PowerDriver:
    """The node's driver, if this host has it enabled (``POWERQ_DRIVERS``).

    :raises ValueError: the driver is not enabled here, or unknown.
    :raises BmcError: the driver could not be set up for this BMC.
    """
    if c.target.driver not in enabled:
        names = ",".join(kind.value for kind in enabled)
        raise ValueError(
            f"the {c.target.driver} driver is not enabled on this host (POWERQ_DRIVERS={names})"
        )
    return driver_for(c.target)


def _close(c: Claim, outcome: Done) -> None:
    """Record the outcome (fenced) and let a batch waiting on it go on."""
    leases.finish(
        c,
        outcome.status,
        error=outcome.error,
        observed=outcome.observed,
        evidence=outcome.evidence,
        acked=outcome.acked,
        fault_threshold=get_settings().fault_threshold,
    )
    batch_pump.ring(c.request_id)


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
        # Marked as sent (maybe by an attempt that died before it could record
        # the next step): settle it by reading, never by sending again.
        step_to_run = Step.CHECK
    try:
        if c.boot_device is not None and c.boot_set_at is None:
            return _set_boot(c, driver, c.boot_device)
        if step_to_run is Step.QUERY:
            return _query(c, driver)
        if step_to_run is Step.SEND:
            return _send(c, driver)
        return _check(c, driver)
    except BmcError as exc:
        return _bmc_error(c, step_to_run, exc)
    except SoftTimeLimitExceeded:
        return _bmc_error(c, step_to_run, TimeoutError(f"step timed out on {c.target.label}"))


def _read(c: Claim, driver: PowerDriver) -> tuple[PowerState, datetime] | None:
    """Read the power state and record it as observed; None: the attempt was fenced out."""
    state = driver.get_power_state()
    read_at, owned = leases.record_observation(c, state)
    return (state, read_at) if owned else None


def _query(c: Claim, driver: PowerDriver) -> Outcome:
    if c.action is Action.VALIDATE:
        driver.close()  # a credential check logs in afresh: a cached session proves nothing
    read = _read(c, driver)
    if read is None:
        return Fenced()
    state, _ = read
    if c.action in (Action.QUERY, Action.VALIDATE):
        return Done(RequestStatus.SUCCEEDED, observed=state, evidence=Evidence.READ)
    if not needs_command(c.action, state):
        # already there: nothing sent
        return Done(RequestStatus.SUCCEEDED, observed=state, evidence=Evidence.ALREADY)
    return Next(Step.SEND, 0, {"observed_before": state, "transient_errors": 0})


def _set_boot(c: Claim, driver: PowerDriver, device: BootDevice) -> Outcome:
    """Set the boot device (safe to repeat) and read it back where the BMC allows.

    A ``boot`` request ends here; a power action with a boot device goes on
    to its query step.
    """
    driver.set_boot_device(device, persistent=c.boot_persistent)
    shown = driver.get_boot_device()
    if shown is not None and shown is not device:
        error = f"the BMC reports boot device {shown.value} after {device.value} was set"
        return Done(RequestStatus.FAILED, error)
    if c.action is Action.BOOT:
        evidence = Evidence.BOOT_DEVICE if shown is device else Evidence.ACKNOWLEDGED
        return Done(RequestStatus.SUCCEEDED, evidence=evidence)
    return Next(Step.QUERY, 0, {"boot_set_at": c.now})


def _send(c: Claim, driver: PowerDriver, *, fallback: bool = False) -> Outcome:
    """Mark, then transmit the phase's command once; an answer is recorded as its ack.

    A reset is done once the BMC answered (it cannot be read back); without
    an answer it may or may not have happened, and that is what is reported.
    """
    command = Action.OFF if fallback else _phase_command(c)
    marked = leases.mark_command_sent(c, command, fallback=fallback)
    if marked is None:
        return Fenced()
    try:
        driver.send_power_action(command)
    except BmcAckUnknown as exc:
        if command is Action.RESET:
            return Done(RequestStatus.FAILED, _reset_unknown(c, str(exc)))
        return _first_check(marked, acked=False)  # maybe sent: settle it by reading
    except BmcError as exc:
        if not exc.transient:
            raise
        # nothing went out: forget the mark and try again
        return _fallback_unsent(c, exc) if fallback else _unsent(c, exc)
    if command is Action.RESET:
        return Done(RequestStatus.SUCCEEDED, evidence=Evidence.ACKNOWLEDGED, acked=True)
    return _first_check(marked, acked=True)


def _phase_command(c: Claim) -> Action:
    before = c.observed_before or PowerState.UNKNOWN
    return command_for(c.action, before, off_verified=c.transition_seen_at is not None)


def _first_check(c: Claim, *, acked: bool) -> Outcome:
    values: dict[str, object] = {"checks": 0, "transient_errors": 0}
    return Next(Step.CHECK, verify.check_delay(0), values, acked=acked)


def _unsent(c: Claim, exc: BmcError) -> Outcome:
    """The command could not be sent at all (no session): retry the send with backoff."""
    errors = c.transient_errors + 1
    if errors > MAX_TRANSIENT_ERRORS or _db_now() >= c.deadline_at:
        return Done(RequestStatus.FAILED, f"BMC unreachable after {errors} attempts: {exc}")
    values: dict[str, object] = {
        "transient_errors": errors,
        "command_sent_at": None,
        "command_sent": None,
    }
    return Next(Step.SEND, verify.retry_delay(errors), values)


def _fallback_unsent(c: Claim, exc: BmcError) -> Outcome:
    """The hard-off fallback could not be sent at all: check again, and the check
    (past the deadline, no fallback sent) asks for the fallback again (bounded)."""
    errors = c.transient_errors + 1
    if errors > MAX_TRANSIENT_ERRORS:
        return Done(RequestStatus.FAILED, f"BMC unreachable after {errors} attempts: {exc}")
    values: dict[str, object] = {
        "transient_errors": errors,
        "fallback_sent_at": None,
        "command_sent": Action.SOFT_OFF,
    }
    return Next(Step.CHECK, verify.retry_delay(errors), values)


def _reset_unknown(c: Claim, why: str) -> str:
    return (
        f"reset was sent once to {c.target.label} and its answer is unknown ({why}): "
        "it may or may not have happened; it is not resent. Check the machine"
    )


def _check(c: Claim, driver: PowerDriver) -> Outcome:
    read = _read(c, driver)
    if read is None:
        return Fenced()
    state, read_at = read
    verdict = verify.check_verdict(
        c.action,
        c.command_sent,
        state,
        now=read_at,
        deadline_at=c.deadline_at,
        command_sent_at=c.command_sent_at,
        acked=c.command_acked_at is not None,
        soft_fallback=c.soft_fallback,
        fallback_sent=c.fallback_sent_at is not None,
    )
    return _follow(c, driver, verdict, state, read_at)


def _follow(
    c: Claim, driver: PowerDriver, verdict: verify.Verdict, state: PowerState, read_at: datetime
) -> Outcome:
    """What a check's verdict leads to."""
    if verdict is verify.Verdict.VERIFIED:
        evidence = Evidence.OFF_THEN_ON if c.action is Action.CYCLE else Evidence.POWER_STATE
        return Done(RequestStatus.SUCCEEDED, observed=state, evidence=evidence)
    if verdict is verify.Verdict.NEXT_PHASE:
        # Off is verified: the on phase is a new command, marked and sent once.
        phase_two: dict[str, object] = {
            "transition_seen_at": read_at,
            "command_sent_at": None,
            "command_sent": None,
        }
        return Next(Step.SEND, 0, phase_two)
    if verdict is verify.Verdict.UNOBSERVABLE:
        return Done(RequestStatus.FAILED, _reset_unknown(c, "no answer was recorded"), state)
    if verdict is verify.Verdict.FALLBACK:
        return _send_fallback(c, driver, read_at)
    if verdict is verify.Verdict.RESEND:
        return _send(c, driver)
    if verdict is verify.Verdict.EXPIRED:
        deadline_s = (c.deadline_at - c.started_at).total_seconds()
        message = verify.expired_message(c.command_sent or c.action, state, deadline_s)
        return Done(RequestStatus.FAILED, message, state)
    # a read that worked ends a run of transient errors: only consecutive ones count
    values: dict[str, object] = {"checks": c.checks + 1, "transient_errors": 0}
    return Next(Step.CHECK, verify.check_delay(c.checks + 1), values)


def _send_fallback(c: Claim, driver: PowerDriver, now: datetime) -> Outcome:
    """soft_off ran out of time and a fallback was asked for: send a hard off once."""
    outcome = _send(c, driver, fallback=True)
    went_out = isinstance(outcome, Next) and "fallback_sent_at" not in outcome.values
    if went_out:  # the hard off gets a deadline of its own
        assert isinstance(outcome, Next)
        deadline = now + timedelta(seconds=DEFAULT_DEADLINE_S[Action.OFF])
        return Next(
            outcome.step,
            outcome.delay_s,
            {**outcome.values, "deadline_at": deadline},
            acked=outcome.acked,
        )
    return outcome


def _bmc_error(c: Claim, step_run: Step, exc: Exception) -> Outcome:
    """Retry transient errors of reads with backoff (bounded); fail on permanent ones."""
    transient = isinstance(exc, TimeoutError) or getattr(exc, "transient", False)
    if not transient:
        return Done(RequestStatus.FAILED, error=f"{c.action.value} failed: {exc}")
    errors = c.transient_errors + 1
    if errors > MAX_TRANSIENT_ERRORS or _db_now() >= c.deadline_at:
        return Done(
            RequestStatus.FAILED,
            error=f"BMC unreachable after {errors} attempts: {exc}",
        )
    # A step cut short after its command was marked settles it by reading.
    retry_step = Step.CHECK if c.command_sent_at is not None else step_run
    return Next(retry_step, verify.retry_delay(errors), {"transient_errors": errors})


def _db_now() -> datetime:
    """PostgreSQL's clock: leases and deadlines are all compared against it."""
    with session_scope() as session:
        now = db_now(session)
    return now
