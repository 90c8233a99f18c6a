"""The session cache's rules, with fake sessions (no network)."""

from __future__ import annotations

import threading

import pytest

from powerq.bmc.base import BmcTarget, BmcUnreachable
from powerq.bmc.ipmi_sessions import SWEEP_BATCH, SessionCache
from powerq.bmc.sim import ManualClock

pytestmark = pytest.mark.ipmi


class FakeBmcs:
    """connect/disconnect that count, and can be told to fail."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.closed: list[str] = []
        self.fail = False

    def connect(self, target: BmcTarget) -> str:
        if self.fail:
            raise BmcUnreachable("down", address=target.address, port=target.port)
        self.opened.append(target.address)
        return f"session-{target.address}-{len(self.opened)}"

    def disconnect(self, session: str) -> None:
        self.closed.append(session)


def _target(i: int) -> BmcTarget:
    return BmcTarget("ipmi", f"10.0.0.{i}", 623, "admin", "pw")


def _cache(bmcs: FakeBmcs, clock: ManualClock, **kwargs: float) -> SessionCache:
    return SessionCache(bmcs.connect, bmcs.disconnect, clock=clock, **kwargs)


def test_one_login_reused() -> None:
    bmcs, clock = FakeBmcs(), ManualClock()
    cache = _cache(bmcs, clock)
    for _ in range(5):
        with cache.lease(_target(1)) as lease:
            assert lease.session == "session-10.0.0.1-1"
    assert cache.logins(_target(1)) == 1


def test_invalidated_session_is_logged_out_and_replaced() -> None:
    bmcs, clock = FakeBmcs(), ManualClock()
    cache = _cache(bmcs, clock)
    with cache.lease(_target(1)) as lease:
        lease.invalidate()
    with cache.lease(_target(1)) as lease:
        assert lease.session == "session-10.0.0.1-2"
    assert bmcs.closed == ["session-10.0.0.1-1"]


def test_failed_login_is_not_cached() -> None:
    bmcs, clock = FakeBmcs(), ManualClock()
    cache = _cache(bmcs, clock)
    bmcs.fail = True
    with pytest.raises(BmcUnreachable), cache.lease(_target(1)):
        pass
    bmcs.fail = False
    with cache.lease(_target(1)) as lease:
        assert lease.session == "session-10.0.0.1-1"


def test_a_busy_bmc_times_out_the_next_caller() -> None:
    bmcs, clock = FakeBmcs(), ManualClock()
    cache = _cache(bmcs, clock, lock_timeout=0.2)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with cache.lease(_target(1)):
            inside.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert inside.wait(30)
    with pytest.raises(BmcUnreachable, match="busy"), cache.lease(_target(1)):
        pass
    release.set()
    holder.join(30)


def test_idle_sessions_are_swept_a_batch_at_a_time() -> None:
    bmcs, clock = FakeBmcs(), ManualClock()
    cache = _cache(bmcs, clock, idle_timeout=10.0)
    for i in range(SWEEP_BATCH * 2 + 1):
        with cache.lease(_target(i)):
            pass
    clock.advance(11.0)
    with cache.lease(_target(200)):
        pass
    assert len(bmcs.closed) == SWEEP_BATCH
    for _ in range(2):
        with cache.lease(_target(200)):
            pass
    assert len(bmcs.closed) == SWEEP_BATCH * 2 + 1


def test_close_all_logs_out_everything() -> None:
    bmcs, clock = FakeBmcs(), ManualClock()
    cache = _cache(bmcs, clock)
    for i in range(3):
        with cache.lease(_target(i)):
            pass
    cache.close_all()
    assert len(bmcs.closed) == 3
