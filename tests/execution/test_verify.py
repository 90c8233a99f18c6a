"""The check step's rules, table-driven (pure: no database, no BMC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from powerq.states import Action, PowerState
from powerq.tasks.verify import (
    FIRST_CHECK_SLACK_S,
    MAX_CHECK_DELAY_S,
    POLL_FLOOR_S,
    POLL_S,
    RESEND_AFTER,
    UNKNOWN_WINDOW_S,
    Learned,
    Verdict,
    check_delay,
    check_verdict,
    should_resend,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(seconds=1)
DEADLINE = T0 + timedelta(seconds=120)
ON, OFF = PowerState.ON, PowerState.OFF


@pytest.mark.parametrize(
    ("action", "sent", "observed", "now", "acked", "fallback", "fallback_sent", "verdict"),
    [
        (Action.ON, Action.ON, ON, LATER, True, False, False, Verdict.VERIFIED),
        (Action.ON, Action.ON, OFF, LATER, True, False, False, Verdict.WAIT),
        (Action.ON, Action.ON, OFF, DEADLINE, True, False, False, Verdict.EXPIRED),
        (Action.OFF, Action.OFF, OFF, LATER, True, False, False, Verdict.VERIFIED),
        (Action.OFF, Action.OFF, ON, LATER, True, False, False, Verdict.WAIT),
        # a cycle is off, verified, then on, verified: "on" during the off phase is waiting
        (Action.CYCLE, Action.OFF, ON, LATER, True, False, False, Verdict.WAIT),
        (Action.CYCLE, Action.OFF, OFF, LATER, True, False, False, Verdict.NEXT_PHASE),
        (Action.CYCLE, Action.ON, OFF, LATER, True, False, False, Verdict.WAIT),
        (Action.CYCLE, Action.ON, ON, LATER, True, False, False, Verdict.VERIFIED),
        (Action.CYCLE, Action.OFF, ON, DEADLINE, True, False, False, Verdict.EXPIRED),
        # a reset cannot be read back: never "verified" by an "on" reading
        (Action.RESET, Action.RESET, ON, LATER, True, False, False, Verdict.UNOBSERVABLE),
        (Action.RESET, Action.RESET, ON, LATER, False, False, False, Verdict.UNOBSERVABLE),
        # a reset of a machine that was off is sent as "on": on verifies it
        (Action.RESET, Action.ON, ON, LATER, True, False, False, Verdict.VERIFIED),
        (Action.SOFT_OFF, Action.SOFT_OFF, ON, LATER, True, True, False, Verdict.WAIT),
        (Action.SOFT_OFF, Action.SOFT_OFF, ON, DEADLINE, True, True, False, Verdict.FALLBACK),
        (Action.SOFT_OFF, Action.OFF, ON, DEADLINE, True, True, True, Verdict.EXPIRED),
        (Action.SOFT_OFF, Action.SOFT_OFF, ON, DEADLINE, True, False, False, Verdict.EXPIRED),
        (Action.SOFT_OFF, Action.SOFT_OFF, OFF, LATER, True, False, False, Verdict.VERIFIED),
        # unanswered (maybe sent) and no effect for RESEND_AFTER: lost, send again
        (Action.OFF, Action.OFF, ON, T0 + RESEND_AFTER, False, False, False, Verdict.RESEND),
        (Action.OFF, Action.OFF, ON, T0 + RESEND_AFTER, True, False, False, Verdict.WAIT),
        # a cycle's phases converge like on/off: an unanswered one with no effect was lost
        (Action.CYCLE, Action.OFF, ON, T0 + RESEND_AFTER, False, False, False, Verdict.RESEND),
        (Action.CYCLE, Action.ON, OFF, T0 + RESEND_AFTER, True, False, False, Verdict.WAIT),
        # soft-off's hard-off fallback is sent once (a resend would resend the soft-off)
        (Action.SOFT_OFF, Action.OFF, ON, T0 + RESEND_AFTER, False, True, True, Verdict.WAIT),
    ],
)
def test_check_verdict(
    action: Action,
    sent: Action,
    observed: PowerState,
    now: datetime,
    acked: bool,
    fallback: bool,
    fallback_sent: bool,
    verdict: Verdict,
) -> None:
    assert (
        check_verdict(
            action,
            sent,
            observed,
            now=now,
            deadline_at=DEADLINE,
            command_sent_at=T0,
            acked=acked,
            soft_fallback=fallback,
            fallback_sent=fallback_sent,
        )
        is verdict
    )


def test_a_learned_node_is_first_checked_where_its_transitions_say() -> None:
    known = Learned(lower=0.48, upper=0.51)
    just_after = 0.51 + FIRST_CHECK_SLACK_S - 0.01
    assert check_delay(since_send_s=0.01, learned=known, first=True) == pytest.approx(just_after)
    # wide bounds are narrowed: look in the middle first, then at the upper bound
    wide = Learned(lower=0.2, upper=0.6)
    middle = 0.4 + FIRST_CHECK_SLACK_S
    assert check_delay(since_send_s=0.0, learned=wide, first=True) == pytest.approx(middle)
    to_upper = 0.6 + FIRST_CHECK_SLACK_S - middle
    assert check_delay(since_send_s=middle, learned=wide, first=False) == pytest.approx(to_upper)
    # the first check is never scheduled in the past, however late the run
    assert check_delay(since_send_s=3.0, learned=known, first=True) == POLL_FLOOR_S


def test_checks_poll_through_the_window_then_back_off_to_a_cap() -> None:
    elapsed = [0.1 * n for n in range(400)]
    known = Learned(lower=0.45, upper=0.5)
    learned = [check_delay(since_send_s=t, learned=known, first=False) for t in elapsed]
    unknown = [check_delay(since_send_s=t, learned=None, first=False) for t in elapsed]
    for delays, window_s in ((learned, 1.5), (unknown, UNKNOWN_WINDOW_S)):
        polls = [d for t, d in zip(elapsed, delays, strict=True) if t < window_s - 1e-9]
        assert max(polls) == POLL_S and min(polls) >= POLL_FLOOR_S
        after = [d for t, d in zip(elapsed, delays, strict=True) if t >= window_s]
        assert after == sorted(after) and after[0] == 0.5 and max(after) == MAX_CHECK_DELAY_S


@pytest.mark.parametrize(
    ("command", "acked", "elapsed_s", "resend"),
    [
        (Action.OFF, False, 25, True),  # unanswered, no effect after 20 s: it was lost
        (Action.OFF, False, 5, False),  # maybe just a slow transition: wait
        (Action.OFF, True, 60, False),  # answered: the BMC took it, never resend
        (Action.ON, False, 25, True),
        (Action.CYCLE, False, 60, False),  # never resend a cycle command
        (Action.RESET, False, 60, False),
        (Action.SOFT_OFF, False, 60, False),  # soft_off has its own fallback
    ],
)
def test_should_resend(command: Action, acked: bool, elapsed_s: float, resend: bool) -> None:
    now = T0 + timedelta(seconds=elapsed_s)
    assert should_resend(command, acked=acked, command_sent_at=T0, now=now) is resend


def test_a_slow_machine_is_polled_less_often_and_never_later_than_the_cap() -> None:
    slow = Learned(lower=29.0, upper=30.0)
    assert check_delay(since_send_s=0.0, learned=slow, first=True) == MAX_CHECK_DELAY_S
    assert check_delay(since_send_s=31.0, learned=slow, first=False) == pytest.approx(3.75)
