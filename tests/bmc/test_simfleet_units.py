"""The simulated BMC's parts without sockets: framing, crypto, negotiation, machine, faults."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from powerq.bmc.simfleet import crypto, handshake, wire
from powerq.bmc.simfleet.cmdlog import CommandLog
from powerq.bmc.simfleet.faults import Faults
from powerq.bmc.simfleet.machine import (
    CC_NOT_IN_PRESENT_STATE,
    CC_OK,
    Behaviour,
    ChassisControl,
    Machine,
)
from powerq.bmc.simfleet.sessions import PENDING_TIMEOUT, SessionTable

pytestmark = pytest.mark.ipmi


class FakeScheduler:
    """Runs scheduled callbacks only when the test advances time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._pending: list[tuple[float, Callable[[], object], list[bool]]] = []

    def call_later(self, delay: float, callback: Callable[[], object]) -> _Handle:
        cancelled = [False]
        self._pending.append((self.now + delay, callback, cancelled))
        return _Handle(cancelled)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for _ in range(100):  # bounded: each pass runs one due callback
            due = [p for p in self._pending if p[0] <= self.now and not p[2][0]]
            if not due:
                return
            first = min(due, key=lambda p: p[0])
            self._pending.remove(first)
            first[1]()


class _Handle:
    def __init__(self, flag: list[bool]) -> None:
        self._flag = flag

    def cancel(self) -> None:
        self._flag[0] = True


def _machine(
    transition: float = 1.0, soft_delay: float | None = 3.0
) -> tuple[Machine, FakeScheduler, CommandLog]:
    scheduler, log = FakeScheduler(), CommandLog()
    return Machine(scheduler, log, Behaviour(transition, soft_delay)), scheduler, log


def _control(machine: Machine, log: CommandLog, command: ChassisControl) -> int:
    return machine.chassis_control(command, log.record("chassis_control"))


def _open_request(auth: int, integrity: int, conf: int, console_id: int = 7) -> bytes:
    slots = b"".join(
        bytes((kind, 0, 0, 8, alg, 0, 0, 0)) for kind, alg in ((0, auth), (1, integrity), (2, conf))
    )
    return bytes((1, 0, 0, 0)) + struct.pack("<I", console_id) + slots


# --- framing and crypto ---------------------------------------------------------------


def test_v2_frame_round_trip_with_integrity_trailer() -> None:
    packet = wire.build_v2(0, 0x11223344, 5, b"payload", encrypted=True, authenticated=True)
    parsed = wire.parse(packet + b"C" * 16)
    assert (parsed.session_id, parsed.sequence, parsed.payload) == (0x11223344, 5, b"payload")
    assert parsed.encrypted and parsed.authenticated and parsed.auth_code == b"C" * 16
    assert len(parsed.signed) % 4 == 0  # integrity pad DWORD-aligns the signed range


def test_malformed_datagrams_are_rejected() -> None:
    for junk in (b"", b"\x06\x00\xff\x07", b"hello world, not rmcp", b"\x06\x00\xff\x06" * 5):
        with pytest.raises(wire.WireError):
            wire.parse(junk)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100])
def test_aes_round_trip_uses_ipmi_padding(size: int) -> None:
    key, message = b"k" * 16, bytes(range(size))
    blob = crypto.encrypt(key, message)
    assert len(blob) % 16 == 0
    assert crypto.decrypt(key, blob) == message


def test_aes_bad_padding_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fixed IV: with a random one, the wrong key's last byte is 0 (a valid empty
    # pad) once in 256 runs, and the test failed by chance.
    monkeypatch.setattr(crypto.os, "urandom", bytes)
    blob = crypto.encrypt(b"k" * 16, b"abc")
    with pytest.raises(crypto.CryptoError, match="bad padding"):
        crypto.decrypt(b"x" * 16, blob)


# --- cipher suite negotiation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("proposal", "suite"),
    [((3, 4, 1), 17), ((1, 1, 1), 3)],
)
def test_open_session_negotiates_the_proposed_suite(
    proposal: tuple[int, int, int], suite: int
) -> None:
    outcome = handshake.open_session(_open_request(*proposal), SessionTable(), 0.0)
    assert outcome.status == handshake.STATUS_OK
    assert outcome.session is not None and outcome.session.suite.suite_id == suite
    assert outcome.reply[16] == proposal[0] and outcome.reply[24] == proposal[1]


@pytest.mark.parametrize("proposal", [(1, 0, 0), (0, 0, 0), (3, 1, 1), (2, 2, 1)])
def test_unsupported_proposals_get_no_cipher_match(proposal: tuple[int, int, int]) -> None:
    """Unlike pyghmi's BMC, which answers suite 3 whatever was proposed."""
    outcome = handshake.open_session(_open_request(*proposal), SessionTable(), 0.0)
    assert outcome.status == handshake.STATUS_NO_CIPHER_MATCH
    assert outcome.session is None


def test_rakp1_with_unknown_user_is_refused() -> None:
    table = SessionTable()
    opened = handshake.open_session(_open_request(1, 1, 1), table, 0.0)
    assert opened.session is not None
    rakp1 = (
        bytes((2, 0, 0, 0))
        + struct.pack("<I", opened.session.bmc_id)
        + b"r" * 16
        + bytes((0x14, 0, 0, 5))
        + b"guest"
    )
    account = handshake.Account(b"admin", b"password")
    outcome = handshake.rakp1(rakp1, table, account, b"g" * 16, 0.0)
    assert outcome.status == handshake.STATUS_UNAUTHORIZED_NAME


def test_session_table_limits_and_expires_handshakes() -> None:
    table = SessionTable(max_sessions=2)
    suite = crypto.SUITE_3
    assert table.create(1, suite, 4, 0.0) and table.create(2, suite, 4, 0.0)
    assert table.create(3, suite, 4, 0.0) is None  # full
    assert table.create(3, suite, 4, PENDING_TIMEOUT + 1) is not None  # stale ones expired


# --- the machine -------------------------------------------------------------------------


def test_power_up_changes_state_after_the_transition() -> None:
    machine, clock, log = _machine(transition=1.0)
    assert _control(machine, log, ChassisControl.POWER_UP) == CC_OK
    clock.advance(0.9)
    assert not machine.powered and machine.transitioning
    clock.advance(0.2)
    assert machine.powered and not machine.transitioning
    entry = log.entries()[-1]
    assert entry.transition_start is not None and entry.transition_end is not None


def test_cycle_is_off_then_on_as_one_operation() -> None:
    machine, clock, log = _machine(transition=1.0)
    machine.powered = True
    assert _control(machine, log, ChassisControl.POWER_CYCLE) == CC_OK
    clock.advance(1.1)
    assert not machine.powered and machine.transitioning
    clock.advance(1.0)
    assert machine.powered and not machine.transitioning


@pytest.mark.parametrize("command", [ChassisControl.POWER_CYCLE, ChassisControl.HARD_RESET])
def test_cycle_and_reset_are_refused_while_off(command: ChassisControl) -> None:
    machine, _, log = _machine()
    assert _control(machine, log, command) == CC_NOT_IN_PRESENT_STATE
    assert not machine.transitioning


def test_reset_is_instantaneous_and_counted() -> None:
    machine, _, log = _machine()
    machine.powered = True
    assert _control(machine, log, ChassisControl.HARD_RESET) == CC_OK
    assert machine.powered and not machine.transitioning and machine.resets == 1
    assert log.entries()[-1].action == "hard_reset"


def test_soft_shutdown_takes_its_own_delay_or_never_happens() -> None:
    machine, clock, log = _machine(transition=1.0, soft_delay=3.0)
    machine.powered = True
    _control(machine, log, ChassisControl.SOFT_SHUTDOWN)
    clock.advance(2.0)
    assert machine.powered
    clock.advance(1.1)
    assert not machine.powered

    ignoring, clock, log = _machine(soft_delay=None)
    ignoring.powered = True
    _control(ignoring, log, ChassisControl.SOFT_SHUTDOWN)
    clock.advance(1000)
    assert ignoring.powered and not ignoring.transitioning


def test_overlapping_command_is_counted_and_supersedes() -> None:
    machine, clock, log = _machine(transition=1.0)
    _control(machine, log, ChassisControl.POWER_UP)
    clock.advance(0.5)
    _control(machine, log, ChassisControl.POWER_DOWN)
    first, second = log.entries()
    assert machine.overlaps == 1 and second.overlapped and first.superseded
    clock.advance(5)
    assert not machine.powered


def test_serialised_commands_do_not_overlap() -> None:
    machine, clock, log = _machine(transition=1.0)
    _control(machine, log, ChassisControl.POWER_UP)
    clock.advance(1.5)
    _control(machine, log, ChassisControl.POWER_DOWN)
    clock.advance(1.5)
    assert machine.overlaps == 0 and not machine.powered


def test_stuck_accepts_but_never_changes() -> None:
    machine, clock, log = _machine()
    code = machine.chassis_control(ChassisControl.POWER_UP, log.record("x"), stuck=True)
    clock.advance(100)
    assert code == CC_OK and not machine.powered


# --- faults ------------------------------------------------------------------------------


def test_flaky_fails_every_kth_command() -> None:
    faults = Faults()
    faults.set("flaky", {"every": 3, "code": 0xC3})
    assert [faults.flaky_failure() for _ in range(6)] == [0, 0, 0xC3, 0, 0, 0xC3]


def test_faults_set_report_and_clear() -> None:
    faults = Faults()
    faults.set("slow", {"delay": 2})
    faults.set("down", {})
    assert faults.active() == {"down": {}, "slow": {"delay": 2.0}}
    faults.clear("down")
    assert faults.active() == {"slow": {"delay": 2.0}}
    faults.clear()
    assert faults.active() == {}


@pytest.mark.parametrize(
    ("kind", "params"), [("bogus", {}), ("lossy", {"fraction": 2}), ("slow", {"delay": -1})]
)
def test_bad_faults_are_refused(kind: str, params: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Faults().set(kind, params)
