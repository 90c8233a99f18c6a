"""The restart policy of ``powerq up``'s supervisor: backoff while a child keeps dying
young, a budget that refills over time, and never a final count."""

from __future__ import annotations

from powerq.supervisor import Backoff, RestartPolicy

POLICY = RestartPolicy(base_s=0.5, max_s=8.0, stable_s=30.0, burst=3, window_s=30.0)


def test_the_delay_doubles_while_a_child_keeps_dying_young() -> None:
    backoff = Backoff(POLICY, now=0.0)
    delays = [backoff.delay(ran_s=1.0, now=100.0 * i) for i in range(1, 6)]  # budget refilled
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_a_run_longer_than_stable_resets_the_backoff() -> None:
    backoff = Backoff(POLICY, now=0.0)
    backoff.delay(ran_s=1.0, now=100.0)
    backoff.delay(ran_s=1.0, now=200.0)
    assert backoff.delay(ran_s=60.0, now=300.0) == 0.5


def test_beyond_the_budget_a_restart_waits_for_it_to_refill_and_is_never_refused() -> None:
    backoff = Backoff(POLICY, now=0.0)
    # 20 deaths at the same instant, each after a stable run (no backoff): the first
    # three use the burst, each later one waits one more refill period (10 s).
    delays = [backoff.delay(ran_s=60.0, now=0.0) for _ in range(20)]
    assert delays[:3] == [0.5, 0.5, 0.5]
    assert delays[3:6] == [10.0, 20.0, 30.0]
    assert delays[-1] == 170.0  # slower and slower, but a restart all the same


def test_the_budget_recovers_over_time() -> None:
    backoff = Backoff(POLICY, now=0.0)
    for _ in range(3):
        backoff.delay(ran_s=60.0, now=0.0)
    assert backoff.delay(ran_s=60.0, now=0.0) == 10.0
    assert backoff.delay(ran_s=60.0, now=1000.0) == 0.5  # a quiet while later: full again
