"""Pure decisions of the check step: is the action verified, and when to look again.

No database, no BMC, no clock: everything comes in as arguments, so the rules
are table-tested (tests/execution/test_verify.py).
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from celery.utils.time import get_exponential_backoff_interval

from powerq.states import Action, PowerState, target_state

# A power cycle leaves the machine on, as it was: seeing it on again proves
# nothing unless it was seen off in between. Some BMCs cycle faster than we
# poll, so after this long with the command accepted and the machine on, the
# cycle counts as done.
CYCLE_SETTLE = timedelta(seconds=5)
# An on/off command whose effect has not begun after this long is taken as
# lost (a dropped packet, a BMC that forgot it) and sent again. Converging
# commands are safe to repeat; waiting this long first keeps a repeat from
# landing on a transition that is merely slow.
RESEND_AFTER = timedelta(seconds=20)
FIRST_CHECK_DELAY_S = 0.5
MAX_CHECK_DELAY_S = 5.0
MAX_RETRY_DELAY_S = 10.0


class Verdict(enum.Enum):
    """What a check concludes."""

    VERIFIED = "verified"
    WAIT = "wait"
    FALLBACK = "fallback"  # soft_off ran out of time; send a hard off
    EXPIRED = "expired"


def check_verdict(
    action: Action,
    command_sent: Action | None,
    observed: PowerState,
    *,
    now: datetime,
    deadline_at: datetime,
    command_sent_at: datetime | None,
    transition_seen_at: datetime | None,
    soft_fallback: bool,
    fallback_sent: bool,
) -> Verdict:
    """Decide what a check that read ``observed`` means for the request."""
    if _reached(action, command_sent, observed, now, command_sent_at, transition_seen_at):
        return Verdict.VERIFIED
    if now < deadline_at:
        return Verdict.WAIT
    if action is Action.SOFT_OFF and soft_fallback and not fallback_sent:
        return Verdict.FALLBACK
    return Verdict.EXPIRED


def _reached(
    action: Action,
    command_sent: Action | None,
    observed: PowerState,
    now: datetime,
    command_sent_at: datetime | None,
    transition_seen_at: datetime | None,
) -> bool:
    if observed is not target_state(action):
        return False
    if command_sent is not Action.CYCLE:
        return True
    settled = command_sent_at is not None and now - command_sent_at >= CYCLE_SETTLE
    return transition_seen_at is not None or settled


def should_resend(
    action: Action,
    observed: PowerState,
    observed_before: PowerState | None,
    command_sent_at: datetime | None,
    now: datetime,
) -> bool:
    """Whether an ``on``/``off`` command seems lost: no progress ``RESEND_AFTER`` after it."""
    if action not in (Action.ON, Action.OFF) or command_sent_at is None:
        return False
    no_progress = observed is (observed_before or observed)
    return no_progress and now - command_sent_at >= RESEND_AFTER


def is_transition(command_sent: Action | None, observed: PowerState) -> bool:
    """Whether ``observed`` is the "off" half of a power cycle in progress."""
    return command_sent is Action.CYCLE and observed is PowerState.OFF


def check_delay(checks: int) -> float:
    """Seconds until the next check after ``checks`` checks (0.5, 1, 2, 4, 5, 5 …)."""
    return float(
        get_exponential_backoff_interval(
            FIRST_CHECK_DELAY_S, checks, MAX_CHECK_DELAY_S, full_jitter=False
        )
        or FIRST_CHECK_DELAY_S
    )


def retry_delay(transient_errors: int) -> float:
    """Seconds before retrying after the ``transient_errors``-th transient BMC error."""
    return float(
        get_exponential_backoff_interval(1.0, transient_errors, MAX_RETRY_DELAY_S, full_jitter=True)
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
