"""The executor: one ``powerq.step`` task run carries a request as far as it can.

A run claims the request (fenced attempt), then performs steps while the next
one is due within a short horizon: query the BMC, send the command if needed,
check it on the hardware's clock (close polls through the node's learned
transition window). A lane worker runs many nodes' runs at once (a bounded
thread pool), so a run that waits a moment for its hardware holds one slot,
never the lane. When the next step is further away, the attempt parks and a
continuation message is scheduled on the same lane. The executor is dumb: it
does what the request says and records success or failure in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from powerq.agent import deadline
from powerq.bmc import driver_for
from powerq.bmc.base import BmcAckUnknown, BmcError, PowerDriver
from powerq.config import get_settings
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
from powerq.tasks import batch_pump, journal, leases, verify
from powerq.tasks.app import app
from powerq.tasks.dispatch import send_step
from powerq.tasks.leases import Claim
from powerq.tasks.node_locks import bmc_turn

log = logging.getLogger(__name__)

MAX_TRANSIENT_ERRORS = 4
# Checks due within this many seconds run in the same task run (the thread
# sleeps; other nodes of the lane go on); anything later parks the attempt.
IN_RUN_HORIZON_S = 1.0
# A run parks after this long whatever is due: far below the lease.
MAX_RUN_S = 20.0
# A bound on the steps of one run, whatever their delays.
MAX_STEPS_PER_RUN = 200
# How long a run waits for its node's BMC when another thread of the lane holds
# it (a monitor read, a run of a lease that lapsed), before parking instead.
BMC_TURN_WAIT_S = 5.0
BUSY_BMC_RETRY_S = 1.0
# How a run waits for its next check (tests replace it to move a manual clock).
pause: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class Next:
    """Carry on with ``step`` after ``delay_s`` (0: now), as ``claim``.

    ``durable``: the claim took back a mark the database still holds (a
    command that could not be sent at all), so the attempt parks to write it
    before it goes on. ``unstored``: a read (made at the claim's ``now``) not
    written yet; it is stored on the node only if the attempt parks, since a
    check in the same run follows within the horizon and the finish stores
    the read that ends the run.
    """

    step: Step
    delay_s: float
    claim: Claim
    durable: bool = False
    unstored: PowerState | None = None


@dataclass(frozen=True)
class Done:
    """Close the request."""

    status: RequestStatus
    _: KW_ONLY
    error: str | None = None
    observed: PowerState | None = None  # read at the claim's ``now``; stored on the node
    evidence: Evidence | None = None  # what showed a success; never more than was seen
    acked: bool = False  # the BMC answered the command this step sent (now)
    took_s: tuple[float, float] | None = None  # a verified transition took more, at most
    claim: Claim | None = None  # the claim as it stands, if the step moved it on


@dataclass(frozen=True)
class Fenced:
    """A newer attempt owns the request: stop without writing anything."""


Outcome = Next | Done | Fenced


@app.task(  # type: ignore[untyped-decorator]
    name="powerq.step",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OperationalError, PoolTimeout),
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=10,
)
def step(request_id: str, continuing: int | None = None, parked_until: str | None = None) -> None:
    """Carry request ``request_id`` further (the message holds only the id, and for
    a parked attempt's continuation its attempt number and parked lease).

    :raises celery.exceptions.Retry: the database went away; the retry goes on
        with the same attempt if nothing was written since (:class:`Interrupted`).
    """
    parked = datetime.fromisoformat(parked_until) if parked_until else None
    try:
        run_request(uuid.UUID(request_id), continuing=leases.Parked(continuing, parked))
    except Interrupted as interrupted:
        lease = interrupted.parked.until
        raise step.retry(
            kwargs={
                "continuing": interrupted.parked.attempt,
                "parked_until": lease.isoformat() if lease is not None else None,
            },
            exc=interrupted.__cause__,
            countdown=verify.retry_delay(step.request.retries + 1),
        ) from interrupted


class Interrupted(Exception):
    """The database went away while an attempt held its request.

    ``parked`` names the attempt and the lease it last wrote: the retry claims
    the request back with them as soon as the database answers, instead of
    waiting for the lease to run out.
    """

    def __init__(self, c: Claim) -> None:
        super().__init__(f"lost the database while running request {c.request_id}")
        self.parked = leases.Parked(c.attempt, c.lease_until)


# What says the database is gone (not a bug in a statement): retried, not failed.
DATABASE_LOST = (OperationalError, PoolTimeout)


def run_request(request_id: uuid.UUID, *, continuing: leases.Parked | None = None) -> None:
    """Claim the request and run its due steps; a request not ours to run is left alone.

    :raises sqlalchemy.exc.OperationalError: the database is unreachable (the
        task retries; the sweeper re-dispatches if it stays down).
    """
    settings = get_settings()
    run_started = time.monotonic()  # the run's clock starts with its claim
    c = leases.claim(request_id, settings.lease_s, continuing=continuing)
    if c is None:
        log.debug("request %s not claimable (finished, leased, not due or unrunnable)", request_id)
        return
    with journal.claimed_run(request_id, run_started):
        _run_claimed(c, run_started)
        deadline.stop_if_lapsed()  # a run that outlived its lane's lease is not journalled


def _run_claimed(c: Claim, run_started: float) -> None:
    """Drive claim ``c`` on its BMC, or fail it at once if no driver can."""
    settings = get_settings()
    try:
        driver = _driver(c, settings.drivers)
    except (NotImplementedError, ValueError, BmcError) as exc:
        failed = Done(RequestStatus.FAILED, error=f"cannot drive BMC {c.target.label}: {exc}")
        with _interrupted_as(c):
            _close(c, failed)
        return
    with bmc_turn(c.node_id, timeout=BMC_TURN_WAIT_S) as taken:
        if taken:
            _drive(c, driver, run_started)
        else:  # another thread is still talking to this BMC: come back shortly
            with _interrupted_as(c):
                _park(c, Next(c.next_step, BUSY_BMC_RETRY_S, c))


@contextlib.contextmanager
def _interrupted_as(c: Claim) -> Iterator[None]:
    """Turn a lost database into :class:`Interrupted` for claim ``c``.

    :raises Interrupted: the database went away inside the block.
    """
    try:
        yield
    except DATABASE_LOST as exc:
        raise Interrupted(c) from exc


def _drive(c: Claim, driver: PowerDriver, run_started: float) -> None:
    """Perform steps while they are due within the horizon, then close or park.

    ``run_started``: when the run claimed (:func:`time.monotonic`); the run
    parks :data:`MAX_RUN_S` after it, whatever is due.

    :raises Interrupted: the database went away (with the claim as last written).
    """
    outcome: Outcome = Next(c.next_step, 0, c)
    for _ in range(MAX_STEPS_PER_RUN):
        with _interrupted_as(c):
            outcome = perform(c, driver)
        if isinstance(outcome, Fenced):
            return
        if isinstance(outcome, Done):
            with _interrupted_as(outcome.claim or c):
                _close(outcome.claim or c, outcome)
            return
        c = outcome.claim
        if not _stays_in_run(outcome, time.monotonic() - run_started):
            break
        if _lease_running_out(c):
            with _interrupted_as(c):
                renewed = _store_read(c, outcome.unstored)
            if renewed is None:
                return  # a newer attempt owns the request now
            c, outcome = renewed, replace(outcome, claim=renewed, unstored=None)
        if outcome.delay_s > 0:
            pause(outcome.delay_s)
    assert isinstance(outcome, Next)
    with _interrupted_as(c):
        _store_and_park(c, outcome)


def _store_and_park(c: Claim, outcome: Next) -> None:
    """Store the run's last unstored read, if any, then park."""
    if outcome.unstored is not None:
        stored = _store_read(c, outcome.unstored)
        if stored is None:
            return  # a newer attempt owns the request now
        c = stored
    with _interrupted_as(c):
        _park(c, outcome)


def _lease_running_out(c: Claim) -> bool:
    """Whether the run's lease is within half its length of becoming claimable
    (a claim may take one :data:`leases.CLAIM_TOLERANCE` before it ends): after
    a long run of checks, or a slow BMC, the run writes to renew it first."""
    if c.lease_until is None:
        return False
    left_s = (c.lease_until - c.clock()).total_seconds()
    return left_s < get_settings().lease_s / 2 + leases.CLAIM_TOLERANCE.total_seconds()


def _store_read(c: Claim, state: PowerState | None) -> Claim | None:
    """Store ``state`` (read at ``c.now``; None: the node's state stays) and renew
    the lease; the claim with the new lease, or None if ``c`` was fenced out.

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    return leases.record_observation(c, state, lease_s=get_settings().lease_s)


def _stays_in_run(outcome: Next, ran_s: float) -> bool:
    """Whether the next step runs in this run: now, or a check due within the horizon."""
    if outcome.durable:
        return False
    if outcome.delay_s <= 0:
        return True
    near = outcome.step is Step.CHECK and outcome.delay_s <= IN_RUN_HORIZON_S
    return near and ran_s + outcome.delay_s <= MAX_RUN_S


def _park(c: Claim, outcome: Next) -> None:
    """Write the claim's progress, hand the lease over until the step is due, and
    ring the lane with a continuation that names this parked lease."""
    parked = leases.park(c, next_step=outcome.step, delay_s=outcome.delay_s)
    if parked is None:
        return  # a newer attempt owns the request now
    try:
        send_step(
            c.request_id,
            c.node_name,
            action=c.action,
            countdown=outcome.delay_s,
            continuing=c.attempt,
            parked_until=parked.isoformat(),
        )
    except Exception as exc:  # broker errors of any transport
        log.warning("could not schedule next step of %s (sweeper will): %s", c.request_id, exc)


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
    finished = leases.finish(
        c,
        outcome.status,
        error=outcome.error,
        observed=outcome.observed,
        evidence=outcome.evidence,
        acked_at=c.clock() if outcome.acked else c.command_acked_at,
        took_s=outcome.took_s,
        fault_threshold=get_settings().fault_threshold,
    )
    if finished.waiting_batch is not None:
        batch_pump.wake(finished.waiting_batch)


def perform(c: Claim, driver: PowerDriver) -> Outcome:
    """Run the claim's next step against the BMC and say what follows (nothing, in a
    lane worker whose lane lease lapsed: it ends at once)."""
    deadline.stop_if_lapsed()
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


def _read(c: Claim, driver: PowerDriver) -> tuple[Claim, PowerState]:
    """Read the power state; the claim returned is stamped with the time just before."""
    c = c.at_now()
    return c, driver.get_power_state()


def _query(c: Claim, driver: PowerDriver) -> Outcome:
    if c.action is Action.VALIDATE:
        driver.close()  # a credential check logs in afresh: a cached session proves nothing
    c, state = _read(c, driver)
    if c.action in (Action.QUERY, Action.VALIDATE):
        return Done(RequestStatus.SUCCEEDED, observed=state, evidence=Evidence.READ, claim=c)
    if not needs_command(c.action, state):
        # already there: nothing sent
        return Done(RequestStatus.SUCCEEDED, observed=state, evidence=Evidence.ALREADY, claim=c)
    return _send(replace(c, observed_before=state, transient_errors=0), driver, read=state)


def _set_boot(c: Claim, driver: PowerDriver, device: BootDevice) -> Outcome:
    """Set the boot device (safe to repeat) and read it back where the BMC allows.

    A ``boot`` request ends here; a power action with a boot device goes on
    to its query step.
    """
    driver.set_boot_device(device, persistent=c.boot_persistent)
    shown = driver.get_boot_device()
    if shown is not None and shown is not device:
        error = f"the BMC reports boot device {shown.value} after {device.value} was set"
        return Done(RequestStatus.FAILED, error=error)
    if c.action is Action.BOOT:
        evidence = Evidence.BOOT_DEVICE if shown is device else Evidence.ACKNOWLEDGED
        return Done(RequestStatus.SUCCEEDED, evidence=evidence)
    done = c.clock()
    return Next(Step.QUERY, 0, replace(c, boot_set_at=done))


def _send(
    c: Claim, driver: PowerDriver, *, fallback: bool = False, read: PowerState | None = None
) -> Outcome:
    """Mark, then transmit the phase's command once; an answer is recorded as its ack.

    ``read``: the state just read that called for the command (stored with the
    mark, in the same statement). A reset is done once the BMC answered (it
    cannot be read back); without an answer it may or may not have happened,
    and that is what is reported.
    """
    command = Action.OFF if fallback else _phase_command(c)
    marked = leases.mark_command_sent(
        c, command, fallback=fallback, read=read, lease_s=get_settings().lease_s
    )
    if marked is None:
        return Fenced()
    deadline.stop_if_lapsed()  # marked under the lane's lease: still ours at the transmit
    try:
        driver.send_power_action(command)
    except BmcAckUnknown as exc:
        if command is Action.RESET:
            return Done(RequestStatus.FAILED, error=_reset_unknown(c, str(exc)))
        return _first_check(marked)  # maybe sent: settle it by reading
    except BmcError as exc:
        if not exc.transient:
            raise
        # nothing went out: forget the mark and try again
        return _fallback_unsent(marked, exc) if fallback else _unsent(marked, exc)
    if command is Action.RESET:
        return Done(RequestStatus.SUCCEEDED, evidence=Evidence.ACKNOWLEDGED, acked=True)
    return _first_check(replace(marked, command_acked_at=marked.clock()))


def _phase_command(c: Claim) -> Action:
    before = c.observed_before or PowerState.UNKNOWN
    return command_for(c.action, before, off_verified=c.transition_seen_at is not None)


def _sent_at(c: Claim) -> datetime:
    return c.fallback_sent_at or c.command_sent_at or c.now


def _since_send_s(c: Claim) -> float:
    return (c.clock() - _sent_at(c)).total_seconds()


def _learned(c: Claim) -> verify.Learned | None:
    """What this node's current command took the last times (None: not learned)."""
    return c.learned.get(c.command_sent) if c.command_sent is not None else None


def _first_check(c: Claim) -> Outcome:
    c = replace(c, checks=0, transient_errors=0, waited_s=_since_send_s(c))
    delay = verify.check_delay(since_send_s=_since_send_s(c), learned=_learned(c), first=True)
    return Next(Step.CHECK, delay, c)


def _unsent(c: Claim, exc: BmcError) -> Outcome:
    """The command could not be sent at all (no session): retry the send with backoff."""
    errors = c.transient_errors + 1
    if errors > MAX_TRANSIENT_ERRORS or c.clock() >= c.deadline_at:
        return Done(RequestStatus.FAILED, error=f"BMC unreachable after {errors} attempts: {exc}")
    c = replace(c, transient_errors=errors, command_sent_at=None, command_sent=None)
    return Next(Step.SEND, verify.retry_delay(errors), c, durable=True)


def _fallback_unsent(c: Claim, exc: BmcError) -> Outcome:
    """The hard-off fallback could not be sent at all: check again, and the check
    (past the deadline, no fallback sent) asks for the fallback again (bounded)."""
    errors = c.transient_errors + 1
    if errors > MAX_TRANSIENT_ERRORS:
        return Done(RequestStatus.FAILED, error=f"BMC unreachable after {errors} attempts: {exc}")
    c = replace(c, transient_errors=errors, fallback_sent_at=None, command_sent=Action.SOFT_OFF)
    return Next(Step.CHECK, verify.retry_delay(errors), c, durable=True)


def _reset_unknown(c: Claim, why: str) -> str:
    return (
        f"reset was sent once to {c.target.label} and its answer is unknown ({why}): "
        "it may or may not have happened; it is not resent. Check the machine"
    )


def _check(c: Claim, driver: PowerDriver) -> Outcome:
    c, state = _read(c, driver)
    read_at = c.clock()
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
    """What a check's verdict leads to (the read is stored with what follows)."""
    if verdict is verify.Verdict.VERIFIED:
        evidence = Evidence.OFF_THEN_ON if c.action is Action.CYCLE else Evidence.POWER_STATE
        took = (c.waited_s, (read_at - _sent_at(c)).total_seconds())
        return Done(
            RequestStatus.SUCCEEDED, observed=state, evidence=evidence, claim=c, took_s=took
        )
    if verdict is verify.Verdict.NEXT_PHASE:
        # Off is verified: the on phase is a new command, marked and sent once.
        return _send(replace(c, transition_seen_at=read_at), driver, read=state)
    if verdict is verify.Verdict.UNOBSERVABLE:
        error = _reset_unknown(c, "no answer was recorded")
        return Done(RequestStatus.FAILED, error=error, observed=state, claim=c)
    if verdict is verify.Verdict.FALLBACK:
        return _send_fallback(c, driver, read_at, state)
    if verdict is verify.Verdict.RESEND:
        return _send(c, driver, read=state)
    if verdict is verify.Verdict.EXPIRED:
        deadline_s = (c.deadline_at - c.started_at).total_seconds()
        message = verify.expired_message(c.command_sent or c.action, state, deadline_s)
        return Done(RequestStatus.FAILED, error=message, observed=state, claim=c)
    return _wait(c, state)


def _wait(c: Claim, state: PowerState) -> Outcome:
    """Not there yet: check again (the read is stored only if the attempt parks).

    Nothing is written here: the run holds its lease for longer than it may
    run (``MAX_RUN_S`` < the lease), and the finish or the mark that follows
    is fenced, so a run that lost its request writes nothing either way.
    """
    # a read that worked ends a run of transient errors: only consecutive ones count
    waited_s = (c.now - _sent_at(c)).total_seconds()
    c = replace(c, checks=c.checks + 1, transient_errors=0, waited_s=waited_s)
    delay = verify.check_delay(since_send_s=_since_send_s(c), learned=_learned(c), first=False)
    return Next(Step.CHECK, delay, c, unstored=state)


def _send_fallback(c: Claim, driver: PowerDriver, now: datetime, state: PowerState) -> Outcome:
    """soft_off ran out of time and a fallback was asked for: send a hard off once.

    The hard off gets a deadline of its own, written with its mark; if nothing
    went out, the soft-off's deadline stands.
    """
    own_deadline = now + timedelta(seconds=DEFAULT_DEADLINE_S[Action.OFF])
    outcome = _send(replace(c, deadline_at=own_deadline), driver, fallback=True, read=state)
    if isinstance(outcome, Next) and outcome.durable:  # nothing went out
        return replace(outcome, claim=replace(outcome.claim, deadline_at=c.deadline_at))
    return outcome


def _bmc_error(c: Claim, step_run: Step, exc: Exception) -> Outcome:
    """Retry transient errors of reads with backoff (bounded); fail on permanent ones."""
    transient = isinstance(exc, TimeoutError) or getattr(exc, "transient", False)
    if not transient:
        return Done(RequestStatus.FAILED, error=f"{c.action.value} failed: {exc}")
    errors = c.transient_errors + 1
    if errors > MAX_TRANSIENT_ERRORS or c.clock() >= c.deadline_at:
        return Done(
            RequestStatus.FAILED,
            error=f"BMC unreachable after {errors} attempts: {exc}",
        )
    # A step cut short after its command was marked settles it by reading.
    retry_step = Step.CHECK if c.command_sent_at is not None else step_run
    return Next(retry_step, verify.retry_delay(errors), replace(c, transient_errors=errors))
