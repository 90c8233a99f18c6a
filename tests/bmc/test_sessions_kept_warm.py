"""IPMI sessions kept warm across monitor ticks: a longer idle timeout only with
keep-alives, a cap on held sessions (least recently used out first), and
pyghmi's keep-alive reaching an idle BMC between ticks (sim fleet)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from powerq.bmc import ipmi_sessions
from powerq.bmc.base import BmcTarget
from powerq.bmc.ipmi import IpmiDriver, connect, disconnect, keep_alive, negotiated_suite
from powerq.bmc.ipmi_sessions import DEFAULT_IDLE_TIMEOUT, SessionCache
from powerq.bmc.sim import ManualClock
from powerq.config import get_settings
from tests.bmc.helpers import SimBmc, wait_until, within

pytestmark = pytest.mark.ipmi


def _target(i: int) -> BmcTarget:
    return BmcTarget("ipmi", f"10.0.1.{i}", 623, "admin", "pw")


class Fake:
    """connect/disconnect that record what they were given."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    def connect(self, target: BmcTarget) -> str:
        return target.address

    def disconnect(self, session: str) -> None:
        self.closed.append(session)


def test_without_keepalive_sessions_stay_below_the_bmc_timeout() -> None:
    cache = SessionCache(Fake().connect, Fake().disconnect)
    assert cache.idle_timeout == DEFAULT_IDLE_TIMEOUT < 60.0


def test_with_keepalive_a_session_outlives_a_monitor_interval() -> None:
    cache = SessionCache(Fake().connect, Fake().disconnect, keepalive=lambda: None)
    assert cache.idle_timeout == 2 * get_settings().monitor_interval_s
    assert cache.idle_timeout > get_settings().monitor_interval_s


def test_a_session_is_reused_across_a_monitor_interval() -> None:
    fake, clock = Fake(), ManualClock()
    cache = SessionCache(fake.connect, fake.disconnect, keepalive=lambda: None, clock=clock)
    with cache.lease(_target(1)):
        pass
    clock.advance(get_settings().monitor_interval_s + 5.0)
    with cache.lease(_target(1)):
        pass
    assert cache.logins(_target(1)) == 1
    assert fake.closed == []


def test_the_cap_logs_out_the_least_recently_used_session() -> None:
    fake, clock = Fake(), ManualClock()
    cache = SessionCache(fake.connect, fake.disconnect, clock=clock, max_sessions=2)
    for i in (1, 2):
        with cache.lease(_target(i)):
            clock.advance(1.0)
    with cache.lease(_target(1)):  # 1 is now the more recently used
        clock.advance(1.0)
    with cache.lease(_target(3)):
        pass
    assert fake.closed == ["10.0.1.2"]
    assert cache.held() == 2


def test_a_session_in_use_is_never_evicted() -> None:
    fake = Fake()
    cache = SessionCache(fake.connect, fake.disconnect, max_sessions=1)
    with cache.lease(_target(1)), cache.lease(_target(2)):
        assert fake.closed == []  # over the cap for a moment, rather than break a call
    assert cache.held() == 2


def test_quiet_sessions_are_kept_alive_and_a_failed_one_dropped() -> None:
    fake, clock, kept = Fake(), ManualClock(), []

    def keepalive(session: str) -> None:
        if session == "10.0.1.2":
            raise OSError("no answer")
        kept.append(session)

    cache = SessionCache(fake.connect, fake.disconnect, keepalive=keepalive, clock=clock)
    for i in (1, 2):
        with cache.lease(_target(i)):
            pass
    assert cache.keep_alive_once() == 0  # not quiet yet
    clock.advance(ipmi_sessions.KEEPALIVE_AFTER_S + 1)
    assert cache.keep_alive_once() == 1
    assert (kept, fake.closed) == (["10.0.1.1"], ["10.0.1.2"])
    assert cache.keep_alive_once() == 0  # just kept alive
    clock.advance(cache.idle_timeout)  # never used again: logged out, not kept alive
    cache.keep_alive_once()
    assert fake.closed == ["10.0.1.2", "10.0.1.1"] and cache.held() == 0


def _device_ids(bmc: SimBmc) -> int:
    return sum(1 for e in bmc.control.log(bmc.name) if e["command"] == "get_device_id")


def test_keepalives_reach_an_idle_bmc(bmc: SimBmc, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing asks the BMC anything after the read, yet a keep-alive (Get Device
    ID) reaches it from the cache's thread, and the session is used again."""
    monkeypatch.setattr(ipmi_sessions, "KEEPALIVE_PERIOD_S", 0.2)
    monkeypatch.setattr(ipmi_sessions, "KEEPALIVE_AFTER_S", 0.5)
    cache: Any = SessionCache(connect, disconnect, suite_of=negotiated_suite, keepalive=keep_alive)
    try:
        within(IpmiDriver(bmc.target, cache).get_power_state)
        before = _device_ids(bmc)
        wait_until(lambda: _device_ids(bmc) > before, 15.0, "a keep-alive at the BMC")
        within(IpmiDriver(bmc.target, cache).get_power_state)
        assert cache.logins(bmc.target) == 1
    finally:
        cache.close_all()


def test_logins_wait_their_turn() -> None:
    """At most ``max_logins`` logins run at once (pyghmi hangs under many at once)."""
    running, peak, guard = 0, 0, threading.Lock()

    def connect(target: BmcTarget) -> str:
        nonlocal running, peak
        with guard:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with guard:
            running -= 1
        return target.address

    cache = SessionCache(connect, Fake().disconnect, max_logins=2)

    def login(i: int) -> None:
        with cache.lease(_target(i)):
            pass

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(login, range(16)))
    assert peak == 2
    assert cache.held() == 16
