"""One BMC conversation per node inside a lane worker (pure threading, no services)."""

from __future__ import annotations

import threading

from powerq.tasks.node_locks import bmc_turn


def test_a_second_thread_skips_or_waits_for_a_busy_bmc() -> None:
    holding, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def step() -> None:
        with bmc_turn(7):
            holding.set()
            release.wait(5)

    runner = threading.Thread(target=step)
    runner.start()
    assert holding.wait(5)
    with bmc_turn(7, wait=False) as taken:
        seen.append(taken)  # a monitor read skips the busy node
    with bmc_turn(8, wait=False) as other:
        seen.append(other)  # another node's BMC is free
    release.set()
    runner.join(5)
    with bmc_turn(7, wait=False) as after:
        seen.append(after)

    assert seen == [False, True, True]
