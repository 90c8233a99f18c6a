"""Pure decisions of the check step: is the action verified, and when to look again.

No database, no BMC, no clock: everything comes in as arguments, so the rules
are table-tested (tests/execution/test_verify.py).
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import NamedTuple

from celery.utils.time import get_exponential_backoff_interval

from powerq.states import Action, PowerState, target_state

# An on/off command that went out unanswered (maybe sent) and shows no effect
# after this long is taken as lost and sent again. An answered
# command is never resent: the BMC took it. Waiting this long first keeps a
# repeat from landing on a transition that is merely slow.
RESEND_AFTER = timedelta(seconds=20)
# The check schedule (see check_delay): close polls through the transition
# window, bounded by the window, then backing off.
POLL_S = 0.2
POLL_FLOOR_S = 0.02
FIRST_CHECK_SLACK_S = 0.01
CLOSE_BOUNDS_S = 0.05
UNKNOWN_WINDOW_S = 3.0
BACKOFF_FLOOR_S = 0.5
MAX_CHECK_DELAY_S = 5.0
MAX_RETRY_DELAY_S = 10


class Verdict(enum.Enum):
    """What a check concludes."""

    VERIFIED = "verified"
    WAIT = "wait"
    NEXT_PHASE = "next_phase"  # a cycle's off phase is verified: send the on phase
    RESEND = "resend"  # an unanswered on/off shows no effect: it was lost
    FALLBACK = "fallback"  # soft_off ran out of time; send a hard off
    UNOBSERVABLE = "unobservable"  # a reset: the power state cannot show it
    EXPIRED = "expired"


def check_verdict(
    action: Action,
    command_sent: Action | None,
    observed: PowerState,
    *,
    now: datetime,
    deadline_at: datetime,
    command_sent_at: datetime | None,
    acked: bool,
    soft_fallback: bool,
    fallback_sent: bool,
) -> Verdict:
    """Decide what a check that read ``observed`` means for the request.

    ``command_sent`` is the command of the current phase (a cycle sends off,
    then on); its target state is what proves it. ``acked``: the BMC answered it.
    """
    phase = command_sent or action
    if phase is Action.RESET:
        return Verdict.UNOBSERVABLE
    if observed is target_state(phase):
        if action is Action.CYCLE and phase is Action.OFF:
            return Verdict.NEXT_PHASE
        return Verdict.VERIFIED
    if now >= deadline_at:
        if action is Action.SOFT_OFF and soft_fallback and not fallback_sent:
            return Verdict.FALLBACK
        return Verdict.EXPIRED
    # A converging on/off (plain, a cycle's phase, a reset sent as "on") that went out
    # unanswered and shows no effect was lost: sent again. A soft-off's hard-off
    # fallback is sent once (resending here would resend the soft-off).
    resendable = action is not Action.SOFT_OFF
    if resendable and should_resend(phase, acked=acked, command_sent_at=command_sent_at, now=now):
        return Verdict.RESEND
    return Verdict.WAIT


def should_resend(
    command: Action, *, acked: bool, command_sent_at: datetime | None, now: datetime
) -> bool:
    """Whether an on/off command not yet in effect looks lost.

    Only a command that went out *unanswered* may be lost; an answered one was
    taken by the BMC and is never resent. Soft-off has its own fallback, and a
    reset is never resent.
    """
    if command not in (Action.ON, Action.OFF) or acked or command_sent_at is None:
        return False
    return now - command_sent_at >= RESEND_AFTER


class Learned(NamedTuple):
    """What a node's last verified transitions of one command showed: it took
    longer than ``lower`` seconds (a read still saw the old state) and at most
    ``upper`` (a read saw the new one)."""

    lower: float
    upper: float

    def first_check_s(self) -> float:
        """When to look first: the middle of what is still unknown, or, once the
        bounds are close, just after the upper one."""
        if self.upper - self.lower <= CLOSE_BOUNDS_S:
            return self.upper + FIRST_CHECK_SLACK_S
        return (self.lower + self.upper) / 2 + FIRST_CHECK_SLACK_S


def check_delay(*, since_send_s: float, learned: Learned | None, first: bool) -> float:
    """Seconds until the next check of a command sent ``since_send_s`` ago.

    The hardware's clock sets the schedule: a node whose transitions were
    learned is first checked where they say it will be done (narrowing the
    bounds each time), then at its upper bound, then every :data:`POLL_S`
    through its transition window (twice the upper bound, at least one second
    more); a node not learned yet is polled through :data:`UNKNOWN_WINDOW_S`.
    Past the window the checks back off to at most :data:`MAX_CHECK_DELAY_S`.
    """
    if learned is not None and first:
        return _bounded(learned.first_check_s() - since_send_s)
    if learned is not None and since_send_s < learned.upper + FIRST_CHECK_SLACK_S:
        return _bounded(min(_poll_s(learned), learned.upper + FIRST_CHECK_SLACK_S - since_send_s))
    upper = None if learned is None else learned.upper
    window_s = UNKNOWN_WINDOW_S if upper is None else max(2 * upper, upper + 1.0)
    if since_send_s < window_s:
        return _poll_s(learned)
    return min(MAX_CHECK_DELAY_S, max(BACKOFF_FLOOR_S, since_send_s - window_s))


def _poll_s(learned: Learned | None) -> float:
    """How often to look through the window: :data:`POLL_S`, or an eighth of a
    slow machine's transition (a 30 s one is not read 150 times)."""
    return POLL_S if learned is None else min(MAX_CHECK_DELAY_S, max(POLL_S, learned.upper / 8))


def _bounded(delay_s: float) -> float:
    return min(MAX_CHECK_DELAY_S, max(POLL_FLOOR_S, delay_s))


def retry_delay(transient_errors: int) -> float:
    """Seconds before retrying after the ``transient_errors``-th transient BMC error."""
    return float(
        get_exponential_backoff_interval(1, transient_errors, MAX_RETRY_DELAY_S, full_jitter=True)
        or 0.5
    )


def expired_message(action: Action, observed: PowerState, deadline_s: float) -> str:
    """The operator-facing reason a request ran out of time."""
    target = target_state(action)
    wanted = target.value if target else "an answer"
    return (
        f"{action.value} not verified within {deadline_s:.0f}s: the BMC still reports "
        f"{observed.value} (wanted {wanted})"
    )
