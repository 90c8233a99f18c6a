"""The check step's rules, table-driven (pure: no database, no BMC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from powerq.states import Action, PowerState
from powerq.tasks.verify import CYCLE_SETTLE, Verdict, check_delay, check_verdict

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(seconds=1)
DEADLINE = T0 + timedelta(seconds=120)
ON, OFF = PowerState.ON, PowerState.OFF


@pytest.mark.parametrize(
    ("action", "sent", "observed", "now", "seen", "fallback", "fallback_sent", "verdict"),
    [
        (Action.ON, Action.ON, ON, LATER, None, False, False, Verdict.VERIFIED),
        (Action.ON, Action.ON, OFF, LATER, None, False, False, Verdict.WAIT),
        (Action.ON, Action.ON, OFF, DEADLINE, None, False, False, Verdict.EXPIRED),
        (Action.OFF, Action.OFF, OFF, LATER, None, False, False, Verdict.VERIFIED),
        (Action.OFF, Action.OFF, ON, LATER, None, False, False, Verdict.WAIT),
        # a cycle is not verified by "on" alone: the machine was on before it
        (Action.CYCLE, Action.CYCLE, ON, LATER, None, False, False, Verdict.WAIT),
        (Action.CYCLE, Action.CYCLE, OFF, LATER, None, False, False, Verdict.WAIT),
        (Action.CYCLE, Action.CYCLE, ON, LATER, LATER, False, False, Verdict.VERIFIED),
        (Action.CYCLE, Action.CYCLE, ON, T0 + CYCLE_SETTLE, None, False, False, Verdict.VERIFIED),
        # cycle of a machine that was off is sent as "on": on verifies it
        (Action.CYCLE, Action.ON, ON, LATER, None, False, False, Verdict.VERIFIED),
        (Action.RESET, Action.RESET, ON, LATER, None, False, False, Verdict.VERIFIED),
        (Action.SOFT_OFF, Action.SOFT_OFF, ON, LATER, None, True, False, Verdict.WAIT),
        (Action.SOFT_OFF, Action.SOFT_OFF, ON, DEADLINE, None, True, False, Verdict.FALLBACK),
        (Action.SOFT_OFF, Action.OFF, ON, DEADLINE, None, True, True, Verdict.EXPIRED),
        (Action.SOFT_OFF, Action.SOFT_OFF, ON, DEADLINE, None, False, False, Verdict.EXPIRED),
        (Action.SOFT_OFF, Action.SOFT_OFF, OFF, LATER, None, False, False, Verdict.VERIFIED),
    ],
)
def test_check_verdict(
    action: Action,
    sent: Action,
    observed: PowerState,
    now: datetime,
    seen: datetime | None,
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
            transition_seen_at=seen,
            soft_fallback=fallback,
            fallback_sent=fallback_sent,
        )
        is verdict
    )


def test_check_delay_backs_off_and_is_capped() -> None:
    delays = [check_delay(n) for n in range(8)]
    assert delays == sorted(delays)
    assert delays[0] == 0.5
    assert max(delays) == 5.0


@pytest.mark.parametrize(
    ("action", "observed", "before", "elapsed_s", "resend"),
    [
        (Action.OFF, ON, ON, 25, True),  # no effect after 20 s: the command was lost
        (Action.OFF, ON, ON, 5, False),  # maybe just a slow transition: wait
        (Action.ON, OFF, OFF, 25, True),
        (Action.ON, ON, OFF, 25, False),  # reached (the verdict handles it)
        (Action.CYCLE, ON, ON, 60, False),  # never resend a cycle
        (Action.RESET, ON, ON, 60, False),
        (Action.SOFT_OFF, ON, ON, 60, False),  # soft_off has its own fallback
    ],
)
def test_should_resend(
    action: Action, observed: PowerState, before: PowerState, elapsed_s: float, resend: bool
) -> None:
    from powerq.tasks.verify import should_resend

    now = T0 + timedelta(seconds=elapsed_s)
    assert should_resend(action, observed, before, T0, now) is resend
