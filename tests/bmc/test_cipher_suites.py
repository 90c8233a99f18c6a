"""Per-node cipher suite, privilege and Kg in the IPMI driver.

Against the sim fleet, including its ``suite3_only_accepts_any`` BMC (which
models pyghmi's BMC server: any proposal is answered with suite 3), and the
option parsing and session-cache rules on their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from pyghmi.ipmi.private import constants as pyghmi_constants

from powerq.bmc import pyghmi_patches
from powerq.bmc.base import BmcAuthError, BmcProtocolError, BmcTarget, BmcUnreachable
from powerq.bmc.ipmi import IpmiDriver, connect, disconnect, login_options, negotiated_suite
from powerq.bmc.ipmi import parse_kg as kg_bytes
from powerq.bmc.ipmi_sessions import SessionCache
from powerq.bmc.sim import ManualClock
from powerq.states import Action, PowerState
from tests.bmc.helpers import SimBmc, wait_until, within

pytestmark = pytest.mark.ipmi
ONLY3 = "suite3_only_accepts_any"


@pytest.fixture
def cache() -> Iterator[SessionCache]:
    sessions = SessionCache(connect, disconnect, suite_of=negotiated_suite)
    yield sessions
    sessions.close_all()


def _opens(bmc: SimBmc) -> list[str]:
    """The BMC's answers to Open Session Requests, as its log details them."""
    return [
        str(e.get("detail", ""))
        for e in bmc.control.log(bmc.name)
        if e["command"] == "open_session_request"
    ]


def _with(bmc: SimBmc, **options: Any) -> BmcTarget:
    return dataclasses.replace(bmc.target, **options)


# --- against the sim fleet ---------------------------------------------------


def test_auto_negotiates_with_a_bmc_that_answers_anything_with_suite_3(
    bmc: SimBmc, cache: SessionCache
) -> None:
    bmc.control.set_fault(bmc.name, ONLY3)
    driver = IpmiDriver(bmc.target, cache)
    within(lambda: driver.send_power_action(Action.ON))
    wait_until(lambda: within(driver.get_power_state) is PowerState.ON, what="power on")
    assert _opens(bmc) == ["status 0x00, cipher suite 3"] * 2  # 17 answered with 3, then 3
    assert cache.known_suite(bmc.target) == "3"


def test_auto_pays_the_fallback_once(bmc: SimBmc, cache: SessionCache) -> None:
    bmc.control.set_fault(bmc.name, ONLY3)
    driver = IpmiDriver(bmc.target, cache)
    within(driver.get_power_state)
    driver.close()
    bmc.control.reset_logs()
    within(driver.get_power_state)
    assert _opens(bmc) == ["status 0x00, cipher suite 3"]


def test_a_remembered_suite_that_stops_working_is_negotiated_again(
    bmc: SimBmc, cache: SessionCache
) -> None:
    """Remembered 3 keeps working on a BMC that also does 17; a remembered 17 that
    the BMC no longer accepts (firmware change) costs one extra Open Session."""
    driver = IpmiDriver(bmc.target, cache)
    within(driver.get_power_state)
    assert cache.known_suite(bmc.target) == "17"
    driver.close()
    bmc.control.set_fault(bmc.name, ONLY3)
    bmc.control.reset_logs()
    assert within(driver.get_power_state) is PowerState.OFF
    assert cache.known_suite(bmc.target) == "3"
    assert len(_opens(bmc)) == 3  # remembered 17 alone (refused), then auto: 17, 3


def test_suite_17_alone_is_refused_with_a_clear_error(bmc: SimBmc, cache: SessionCache) -> None:
    bmc.control.set_fault(bmc.name, ONLY3)
    driver = IpmiDriver(_with(bmc, cipher_suite="17"), cache)
    with pytest.raises(BmcProtocolError) as caught:
        within(driver.get_power_state)
    message = str(caught.value)
    assert "the BMC did not accept cipher suite 17" in message
    assert "set ipmi_cipher_suite to 3 or auto" in message
    assert "algorithms 1/1/1 instead of 3/4/1" in message
    assert not caught.value.transient
    assert len(_opens(bmc)) == 1


@pytest.mark.parametrize("suite", ["3", "17"])
def test_a_fixed_suite_is_the_only_one_proposed(
    bmc: SimBmc, cache: SessionCache, suite: str
) -> None:
    driver = IpmiDriver(_with(bmc, cipher_suite=suite), cache)
    assert within(driver.get_power_state) is PowerState.OFF
    assert _opens(bmc) == [f"status 0x00, cipher suite {suite}"]


def test_auto_uses_17_when_the_bmc_does(bmc: SimBmc, cache: SessionCache) -> None:
    within(IpmiDriver(bmc.target, cache).get_power_state)
    assert _opens(bmc) == ["status 0x00, cipher suite 17"]


def test_operator_privilege_drives_power(bmc: SimBmc, cache: SessionCache) -> None:
    driver = IpmiDriver(_with(bmc, privilege="operator"), cache)
    within(lambda: driver.send_power_action(Action.ON))
    wait_until(lambda: within(driver.get_power_state) is PowerState.ON, what="power on")


def test_the_mode_is_reported_and_cleared(bmc: SimBmc) -> None:
    status = bmc.control.set_fault(bmc.name, ONLY3)
    assert ONLY3 in status["faults"]
    assert ONLY3 not in bmc.control.clear_fault(bmc.name, ONLY3)["faults"]


# --- options on their own ----------------------------------------------------


@pytest.mark.parametrize(
    ("kg", "key"),
    [
        ("text key", b"text key"),
        ("0x0102ABcd", b"\x01\x02\xab\xcd"),
        ("0X00ff", b"\x00\xff"),
        ("0xyz", b"0xyz"),  # not hex after 0x: text
        ("12345678901234567890", b"12345678901234567890"),
    ],
)
def test_kg_formats(kg: str, key: bytes) -> None:
    assert kg_bytes(kg) == key


@pytest.mark.parametrize("kg", ["", "0xabc", "123456789012345678901", "0x" + "00" * 21])
def test_malformed_kg(kg: str) -> None:
    with pytest.raises(ValueError):
        kg_bytes(kg)


def test_login_options() -> None:
    target = BmcTarget("ipmi", "10.0.0.1", 623, "u", "p", cipher_suite="3", privilege="operator")
    assert login_options(target) == ("3", 3, None)
    assert login_options(dataclasses.replace(target, kg="0x01")) == ("3", 3, b"\x01")


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"cipher_suite": "1"}, BmcProtocolError),
        ({"privilege": "user"}, BmcProtocolError),
        ({"kg": "0xabc"}, BmcAuthError),
    ],
)
def test_unusable_options_fail_before_any_traffic(
    options: dict[str, Any], error: type[Exception]
) -> None:
    target = BmcTarget("ipmi", "10.0.0.1", 623, "u", "p", **options)
    with pytest.raises(error) as caught:
        connect(target)  # 10.0.0.1 is never contacted: the options fail first
    assert "0xabc" not in str(caught.value)


# --- the session cache and the options ----------------------------------------


class _FakeBmc:
    """connect/disconnect that record the suite asked for; "17" can be refused."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.closed: list[str] = []
        self.refuse_17 = False

    def connect(self, target: BmcTarget) -> str:
        self.asked.append(target.cipher_suite)
        if target.cipher_suite == "17" and self.refuse_17:
            raise BmcProtocolError("the BMC did not accept cipher suite 17")
        suite = "3" if target.cipher_suite == "3" or self.refuse_17 else "17"
        return f"{len(self.asked)}:{target.privilege}:{target.cipher_suite}:{suite}"

    def disconnect(self, session: str) -> None:
        self.closed.append(session)


def _fake_cache(fake: _FakeBmc) -> SessionCache:
    return SessionCache(
        fake.connect, fake.disconnect, clock=ManualClock(), suite_of=lambda s: s.split(":")[3]
    )


def _target(**options: Any) -> BmcTarget:
    return BmcTarget("ipmi", "10.0.0.1", 623, "admin", "pw", **options)


def test_targets_with_other_options_get_other_sessions_one_at_a_time() -> None:
    fake = _FakeBmc()
    cache = _fake_cache(fake)
    variants = [
        _target(),
        _target(privilege="operator"),
        _target(cipher_suite="3"),
        _target(kg="k1"),
        _target(kg="k2"),
    ]
    sessions = []
    for target in variants:
        with cache.lease(target) as lease:
            sessions.append(lease.session)
    assert len(set(sessions)) == len(variants)
    assert fake.closed == sessions[:-1]  # each login first logged out the BMC's other session
    with cache.lease(_target(kg="k2")) as lease:
        assert lease.session == sessions[-1]


def test_auto_proposes_the_remembered_suite_and_renegotiates_when_refused() -> None:
    fake = _FakeBmc()
    cache = _fake_cache(fake)
    with cache.lease(_target()) as lease:
        lease.invalidate()
    assert cache.known_suite(_target()) == "17"
    fake.refuse_17 = True
    with cache.lease(_target()):
        pass
    assert fake.asked == ["auto", "17", "auto"]
    assert cache.known_suite(_target()) == "3"


def test_a_fixed_suite_is_never_replaced_by_the_remembered_one() -> None:
    fake = _FakeBmc()
    cache = _fake_cache(fake)
    with cache.lease(_target()):
        pass
    with cache.lease(_target(cipher_suite="3")):
        pass
    assert fake.asked == ["auto", "3"]


def test_an_unreachable_bmc_keeps_its_remembered_suite() -> None:
    fake = _FakeBmc()
    cache = _fake_cache(fake)
    with cache.lease(_target()) as lease:
        lease.invalidate()

    def down(target: BmcTarget) -> str:
        raise BmcUnreachable("down")

    cache._connect = down
    with pytest.raises(BmcUnreachable), cache.lease(_target()):
        pass
    assert cache.known_suite(_target()) == "17"


# --- the Open Session Response check on its own (pyghmi_patches, workaround 5) ---


class _FakeLogin:
    """The parts of a pyghmi client session the Open Session check touches."""

    def __init__(self, port: int, attempted: int = 256) -> None:
        self.bmc, self.port = "10.9.9.9", port
        self.sessioncontext, self.rmcptag, self.localsid = "OPENSESSION", 7, 0x11223344
        self.attemptedhash = attempted
        self.errors: list[str] = []
        self.reopened = 0
        self.rakp1_sent = 0

    def onlogon(self, parameter: dict[str, str]) -> None:
        self.errors.append(parameter["error"])

    def _open_rmcpplus_request(self) -> None:
        self.reopened += 1

    def _send_rakp1(self) -> None:
        self.rakp1_sent += 1

    def answer(self, status: int, algorithms: tuple[int, int, int] = (3, 4, 1)) -> bytes:
        head = bytes((self.rmcptag, status, 4, 0)) + self.localsid.to_bytes(4, "little")
        if status:
            return head
        slots = b"".join(
            bytes((kind, 0, 0, 8, alg, 0, 0, 0)) for kind, alg in enumerate(algorithms)
        )
        return head + b"\x01\x02\x03\x04" + slots


def _check(login: _FakeLogin, data: bytes, wanted: str = "auto") -> None:
    pyghmi_patches.apply()
    with pyghmi_patches.wanted_suite(login.bmc, login.port, wanted):
        pyghmi_patches.got_rmcp_response_checked(login, data)


def test_accepted_proposal_goes_on_to_rakp1() -> None:
    login = _FakeLogin(1)
    _check(login, login.answer(0, (3, 4, 1)))
    assert (login.rakp1_sent, login.reopened, login.errors) == (1, 0, [])


@pytest.mark.parametrize("answer", [(0x11, (3, 4, 1)), (0, (1, 1, 1)), (0x01, (3, 4, 1))])
def test_auto_falls_back_to_3_after_any_refusal_of_17(answer: tuple[int, Any]) -> None:
    login = _FakeLogin(2)
    _check(login, login.answer(*answer))
    assert (login.reopened, login.attemptedhash, login.errors) == (1, 1, [])


@pytest.mark.parametrize(
    ("status", "algorithms", "detail"),
    [(0x11, (3, 4, 1), "RMCP+ status 0x11"), (0, (1, 1, 1), "algorithms 1/1/1 instead of 3/4/1")],
)
def test_17_only_never_falls_back(
    status: int, algorithms: tuple[int, int, int], detail: str
) -> None:
    login = _FakeLogin(3)
    _check(login, login.answer(status, algorithms), wanted="17")
    assert login.reopened == 0 and login.rakp1_sent == 0
    assert len(login.errors) == 1
    assert "did not accept cipher suite 17" in login.errors[0] and detail in login.errors[0]


def test_17_only_and_a_status_not_about_suites_says_what_it_is() -> None:
    login = _FakeLogin(4)
    _check(login, login.answer(0x01), wanted="17")
    assert login.reopened == 0
    assert login.errors == [pyghmi_constants.rmcp_codes[0x01]]


def test_suite_3_answered_with_other_algorithms_is_named() -> None:
    login = _FakeLogin(5, attempted=1)
    _check(login, login.answer(0, (3, 4, 1)))
    assert login.reopened == 0
    assert "did not accept cipher suite 3" in login.errors[0]
    assert "set ipmi_cipher_suite to 17 or auto" in login.errors[0]


def test_stale_answers_are_left_to_pyghmi() -> None:
    login = _FakeLogin(6)
    data = login.answer(0x11)
    login.rmcptag += 1  # an answer to an earlier attempt
    _check(login, data)
    assert (login.reopened, login.errors) == (0, [])
