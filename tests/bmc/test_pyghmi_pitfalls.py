"""Each pyghmi 1.6 client pitfall, shown to bite without powerq's workaround and not with it.

pyghmi's state is process-global, so the unpatched runs happen in fresh
subprocesses (``tests/bmc/pyghmi_probe.py``); the deterministic socket race
is shown in-process on a socket of our own.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyghmi.ipmi.private import session as pyghmi_session

from powerq.bmc import driver_for, pyghmi_patches
from powerq.bmc.base import BmcUnreachable
from powerq.states import PowerState
from tests.bmc.helpers import HANG_GUARD, SimBmc, within

pytestmark = pytest.mark.ipmi
_ROOT = Path(__file__).resolve().parents[2]


def _probe(case: str, bmc: SimBmc, *, patched: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "tests.bmc.pyghmi_probe", case, str(bmc.target.port)]
    result = subprocess.run(
        command + (["--patched"] if patched else []),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        cwd=_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


class _RacySocket(socket.socket):
    """A socket on which a sender thread always wins pyghmi's blocking-mode race.

    pyghmi's IO thread calls ``setblocking(0)`` then ``recvfrom``; a caller
    thread's ``_io_sendto`` calls ``setblocking(1)``. Here the second call
    lands between the first two, every time.
    """

    def setblocking(self, flag: bool) -> None:
        super().setblocking(flag)
        if not flag:
            super().setblocking(True)  # the concurrent _io_sendto


@pytest.fixture
def racy_socket() -> Any:
    sock = _RacySocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def test_unpatched_io_thread_blocks_in_recv_when_a_sender_wins_the_race(
    racy_socket: socket.socket,
) -> None:
    pyghmi_patches.apply()
    original = pyghmi_patches.ORIGINALS["_io_recvfrom"]
    reader = threading.Thread(target=original, args=(racy_socket, 3000), daemon=True)
    reader.start()
    reader.join(1.0)
    still_blocked = reader.is_alive()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as poke:  # release it
        poke.sendto(b"wake", racy_socket.getsockname())
    reader.join(HANG_GUARD)
    assert still_blocked, "pyghmi's own _io_recvfrom should block on a blocking socket"


def test_patched_recv_never_blocks_whatever_the_socket_mode(racy_socket: socket.socket) -> None:
    pyghmi_patches.apply()
    assert pyghmi_session._io_recvfrom is pyghmi_patches.recvfrom_never_blocks
    racy_socket.setblocking(True)
    assert within(lambda: pyghmi_session._io_recvfrom(racy_socket, 3000), 10.0) is None


def test_login_waiter_misses_a_wakeup_without_the_patch(bmc: SimBmc) -> None:
    """Concurrent logins: a waiter whose login another thread completed sleeps ~keep-alive."""
    assert _probe("lost-wakeup", bmc, patched=False)["blocked"] is True
    assert _probe("lost-wakeup", bmc, patched=True)["blocked"] is False


def test_command_waiter_stalls_on_an_already_read_reply_without_the_patch(bmc: SimBmc) -> None:
    """The ~1 % 0.5-1 s stalls: the reply was read before the caller started to wait."""
    assert _probe("queued-reply", bmc, patched=False)["blocked"] is True
    assert _probe("queued-reply", bmc, patched=True)["blocked"] is False


def test_second_command_with_str_credentials_hangs_bytes_share_the_session(
    bmc: SimBmc,
) -> None:
    """Why the driver passes credentials as bytes (pyghmi's session cache keys on bytes)."""
    assert _probe("str", bmc, patched=False)["blocked"] is True
    shared = _probe("bytes", bmc, patched=False)
    assert shared == {"blocked": False, "same_session": True}


def test_retry_budget_is_bounded_after_login(bmc: SimBmc) -> None:
    driver = driver_for(bmc.target)
    assert within(driver.get_power_state) is PowerState.OFF
    from powerq.bmc.ipmi import SESSIONS

    with SESSIONS.lease(bmc.target) as lease:
        ipmi = lease.session.ipmi_session
        assert (ipmi.maxtimeout, ipmi.logontries) == (pyghmi_patches.COMMAND_MAX_TIMEOUT, 0)


def test_many_threads_with_dead_bmcs_never_hang(make_bmc: Any) -> None:
    """The load that froze unpatched pyghmi for good (IO thread parked in recvfrom)."""
    bmcs = [make_bmc() for _ in range(24)]
    dead = {bmc.name for bmc in bmcs[::6]}
    for name in dead:
        bmcs[0].control.set_fault(name, "down")

    def read(bmc: SimBmc) -> str:
        try:
            return str(driver_for(bmc.target).get_power_state())
        except BmcUnreachable:
            return "unreachable"

    for _ in range(2):
        with ThreadPoolExecutor(16) as pool:
            results = within(lambda: list(pool.map(read, bmcs)))
        expected = ["unreachable" if b.name in dead else "off" for b in bmcs]
        assert results == expected


def test_a_bmc_answering_17_with_suite_3_fails_every_login_without_the_patch(
    bmc: SimBmc,
) -> None:
    """pyghmi's BMC server (VirtualBMC) answers any Open Session with suite 3; pyghmi
    takes its suite-17 proposal as accepted and cannot parse RAKP 2."""
    bmc.control.set_fault(bmc.name, "suite3_only_accepts_any")
    unpatched = _probe("suite-answer", bmc, patched=False)
    assert unpatched["ok"] is False
    assert "pack expected 32 items" in unpatched["error"], unpatched
    assert _probe("suite-answer", bmc, patched=True) == {"ok": True, "error": ""}
