"""WORKAROUNDS FOR PYGHMI 1.6.x CLIENT BUGS — the one place powerq touches pyghmi internals.

Each was reproduced against the simulated fleet (see tests/bmc/test_pyghmi_pitfalls.py):

1. **IO thread deaf after a blocking recv** (``_io_recvfrom``). Caller threads
   put the shared UDP socket in *blocking* mode to send (``_io_sendto``), the
   IO thread puts it back in non-blocking mode and then reads until EAGAIN.
   When a send lands between those two steps, the IO thread's final
   ``recvfrom`` blocks until another datagram reaches *that* socket; with a
   down BMC on it that may be never, and then every session in the process
   stops hearing replies (reproduced: a 32-thread run with 10 % of BMCs down
   hung for good, IO thread parked in ``recvfrom``). Fix: receive with
   ``MSG_DONTWAIT`` so the socket's mode no longer matters.

2. **Lost wake-ups** (``_io_wait``). A waiter registers with the IO thread
   only *after* sending; when the reply is read (or processed by another
   thread's ``wait_for_rsp``) in between, nobody wakes the waiter until its
   deadline: the randomised retry timer for a command (the ~1 % 0.5-1 s
   stalls, reproduced at 1.3 % of calls with 32 threads) or the next
   keep-alive for a login (~23 s stalls of concurrent logins, reproduced).
   Fix: after registering, return at once if a reply is already queued, and
   never sleep longer than :data:`POLL_CAP` without re-checking.

3. **Unbounded retry budget.** After login pyghmi allows ~9 s of retries and
   then a silent re-login with ~20 s more before a command fails.
   :func:`bound_session` caps it (see :data:`COMMAND_MAX_TIMEOUT`): a dead BMC
   now fails a command in 4.5-6 s; the driver re-logs in on the next call.

4. **Retransmitted power commands** (``Session._timedout``). A command with
   no answer after pyghmi's retry timer (0.5-1 s) is sent again, identical;
   a BMC that runs every request it receives then powers the machine twice
   (reproduced: a BMC answering in 0.8 s ran a cycle twice). pyghmi's own
   ``retry=False`` does not wait for the answer at all. :func:`send_once`
   transmits once and waits for the answer; no answer is "maybe sent".
   Reads go the same way with a shorter wait: a dead BMC then holds a lane
   for about a second, and the executor, not pyghmi, decides when to ask again.

5. **Cipher suite taken for granted** (``Session._got_rmcp_response``). pyghmi
   proposes suite 17, falls back to suite 3 only when the BMC *refuses* 17, and
   never reads the algorithms the BMC put in its Open Session Response ("we
   take it for granted that the responder accepted our proposal"). A BMC that
   answers any proposal with suite 3 (pyghmi's own BMC server, hence
   VirtualBMC) then makes RAKP 2 fail to parse ("pack expected 32 items for
   packing (got 20)"), on every login. :func:`got_rmcp_response_checked` reads
   the answered algorithms: a refusal or other algorithms than proposed falls
   back from 17 to 3, unless the login asked for suite 17 only, and a failure
   says which suite the BMC did not accept. :func:`wanted_suite` makes a login
   propose one suite only (``_open_rmcpplus_request``: suite 3 is pyghmi's
   ``attemptedhash = 1``), since pyghmi has no parameter for it. Reproduced
   against the sim fleet's ``suite3_only_accepts_any`` BMC and pyghmi's BMC
   server (tests/bmc/test_pyghmi_pitfalls.py, tests/bmc/test_pyghmi_bmc_interop.py).

Also relied on, not patched: credentials are passed as ``bytes`` (pyghmi's
session cache compares the encoded bytes; ``str`` credentials make a second
``Command`` to a BMC with an open session wait forever), and one ``Command``
per BMC is reused under a per-BMC lock (:mod:`powerq.bmc.ipmi_sessions`).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pyghmi.ipmi.private import constants as _constants
from pyghmi.ipmi.private import session as _session

PYGHMI_SERIES = "1.6."
POLL_CAP = 0.05  # seconds a pyghmi waiter may sleep before re-checking its condition
COMMAND_MAX_TIMEOUT = 1  # pyghmi retries a command until its retry timer would exceed this
# How long an answer is awaited after the one transmission of a request. A
# healthy BMC answers in milliseconds, slow ones in about a second. A read that
# gets no answer fails fast (the executor retries it later, without holding
# the lane); a power command's answer is worth waiting a little longer for.
READ_ANSWER_WAIT_S = 1.0
COMMAND_ANSWER_WAIT_S = 1.5

# Cipher suites as pyghmi proposes them: (authentication, integrity, confidentiality)
# algorithm numbers (IPMI v2.0 tables 13-17..13-19), and pyghmi's ``attemptedhash``.
SUITE_ALGORITHMS: dict[str, tuple[int, int, int]] = {
    "17": (0x03, 0x04, 0x01),  # RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128
    "3": (0x01, 0x01, 0x01),  # RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128
}
_ATTEMPTED_HASH = {"17": 256, "3": 1}
# RMCP+ statuses that mean "not these algorithms" (anything else is not about suites)
_SUITE_STATUSES = frozenset({0x04, 0x05, 0x06, 0x07, 0x10, 0x11, 0x12})
_OPEN_RESPONSE_LEN = 36

ORIGINALS: dict[str, Callable[..., Any]] = {}
_apply_lock = threading.Lock()
_WANTED: dict[tuple[str, int], str] = {}  # (address, port) -> the only suite to propose


def apply() -> None:
    """Install the workarounds into pyghmi's session module (idempotent, thread-safe).

    :raises RuntimeError: the installed pyghmi is not the 1.6 series these fix.
    """
    with _apply_lock:
        if ORIGINALS:
            return
        _check_version()
        ORIGINALS["_io_recvfrom"] = _session._io_recvfrom
        ORIGINALS["_io_wait"] = _session._io_wait
        ORIGINALS["_open_rmcpplus_request"] = _session.Session._open_rmcpplus_request
        ORIGINALS["_got_rmcp_response"] = _session.Session._got_rmcp_response
        _session._io_recvfrom = recvfrom_never_blocks
        # Workaround 6: one lock for pyghmi's two session registries. It takes
        # them in both orders (wait_for_rsp calls _timedout, which resends,
        # under WAITING_SESSIONS; send_payload takes WAITING_SESSIONS inside
        # KEEPALIVE_SESSIONS), which deadlocks concurrent logins under load.
        # Both are RLocks named at call time, so aliasing them removes the cycle.
        _session.WAITING_SESSIONS = _session.KEEPALIVE_SESSIONS
        _session._io_wait = io_wait_bounded
        _session.Session._open_rmcpplus_request = open_rmcpplus_request_wanted
        _session.Session._got_rmcp_response = got_rmcp_response_checked


def applied() -> bool:
    """Whether :func:`apply` has run in this process."""
    return bool(ORIGINALS)


def bound_session(ipmi_session: Any) -> None:
    """Cap a logged-in pyghmi session's retries (workaround 3).

    No silent re-login (``logontries = 0``): a command that gets no answer fails
    after three transmissions, and the session is marked broken.
    """
    ipmi_session.maxtimeout = COMMAND_MAX_TIMEOUT
    ipmi_session.logontries = 0


def send_once(
    ipmi_session: Any, netfn: int, command: int, data: list[int], *, wait_s: float
) -> dict[str, Any] | None:
    """Transmit one IPMI request exactly once and wait ``wait_s`` for its answer
    (workaround 4).

    Sets the session's retry timer to its ceiling for this one call, so the
    first expiry ends the call (pyghmi then reports ``{'error': 'timeout'}``
    and marks the session broken) instead of retransmitting. pyghmi restores
    its timer itself when any answer arrives. Returns pyghmi's response dict:
    None or an ``error`` entry when no answer came.

    :raises pyghmi.exceptions.IpmiException: the session was not usable, or no
        answer came within the call's overall limit (nothing more was sent).
    """
    ipmi_session.timeout = ipmi_session.maxtimeout
    response: dict[str, Any] | None = ipmi_session.raw_command(
        netfn=netfn, command=command, data=data, timeout=wait_s
    )
    return response


@contextlib.contextmanager
def wanted_suite(address: str, port: int, suite: str) -> Iterator[None]:
    """Within the block, logins to ``address:port`` propose ``suite`` only (workaround 5).

    ``suite`` is "3" or "17"; "auto" leaves pyghmi's order (17, then 3). The
    caller logs in to one BMC at a time (the session cache's per-BMC lock).

    :raises ValueError: ``suite`` is not "auto", "3" or "17".
    """
    if suite != "auto" and suite not in SUITE_ALGORITHMS:
        raise ValueError(f"cipher suite {suite!r} is not auto, 3 or 17")
    key = (address, port)
    if suite != "auto":
        _WANTED[key] = suite
    try:
        yield
    finally:
        _WANTED.pop(key, None)


def negotiated_suite(ipmi_session: Any) -> str:
    """The cipher suite ("3" or "17") a logged-in pyghmi session uses."""
    return "3" if ipmi_session.attemptedhash == _ATTEMPTED_HASH["3"] else "17"


def open_rmcpplus_request_wanted(self: Any) -> Any:
    """Replacement for ``Session._open_rmcpplus_request``: a login that wants
    suite 3 only proposes it at once (pyghmi's ``attemptedhash = 1``)."""
    if _WANTED.get((self.bmc, self.port)) == "3":
        self.attemptedhash = _ATTEMPTED_HASH["3"]
    return ORIGINALS["_open_rmcpplus_request"](self)


def got_rmcp_response_checked(self: Any, data: Any) -> Any:
    """Replacement for ``Session._got_rmcp_response`` that reads what the BMC accepted.

    An Open Session Response that refuses the proposed algorithms, or names
    others than proposed, makes a suite-17 login fall back to suite 3 (unless
    it wants 17 only), and otherwise ends the login with an error naming the
    suite. Everything else goes to pyghmi's own handler.
    """
    if not _is_open_session_answer(self, data):
        return ORIGINALS["_got_rmcp_response"](self, data)
    proposed = "3" if self.attemptedhash == _ATTEMPTED_HASH["3"] else "17"
    reason = _refusal(data, SUITE_ALGORITHMS[proposed])
    if reason is None:
        return ORIGINALS["_got_rmcp_response"](self, data)
    if proposed == "17" and _WANTED.get((self.bmc, self.port)) != "17":
        self.attemptedhash = _ATTEMPTED_HASH["3"]  # as pyghmi does after a refusal
        self._open_rmcpplus_request()
        return None
    if data[1] != 0 and data[1] not in _SUITE_STATUSES:  # e.g. no free session slot
        self.onlogon({"error": _constants.rmcp_codes.get(data[1], f"RMCP+ status {data[1]}")})
    else:
        self.onlogon({"error": suite_refused_message(proposed, reason)})
    return -9


def suite_refused_message(suite: str, reason: str) -> str:
    """What a login says when the BMC did not accept cipher suite ``suite``."""
    other = "3" if suite == "17" else "17"
    return (
        f"the BMC did not accept cipher suite {suite} ({reason}); "
        f"set ipmi_cipher_suite to {other} or auto"
    )


def _is_open_session_answer(self: Any, data: Any) -> bool:
    """Whether ``data`` answers the Open Session this login is waiting for."""
    if getattr(self, "sessioncontext", None) != "OPENSESSION" or len(data) < 2:
        return False
    if data[0] != self.rmcptag:
        return False
    if data[1] != 0:
        return True
    if len(data) < _OPEN_RESPONSE_LEN:
        return False
    return bool(struct.unpack("<I", bytes(data[4:8]))[0] == self.localsid)


def _refusal(data: Any, proposed: tuple[int, int, int]) -> str | None:
    """Why an Open Session Response does not accept ``proposed``; None when it does."""
    if data[1] != 0:
        text = _constants.rmcp_codes.get(data[1], "unknown status")
        return f"it refused the proposal: RMCP+ status {data[1]:#04x}, {text}"
    answered = (data[16] & 0x3F, data[24] & 0x3F, data[32] & 0x3F)
    if answered == proposed:
        return None
    return (
        "it answered the Open Session with authentication/integrity/confidentiality "
        f"algorithms {_algorithms(answered)} instead of {_algorithms(proposed)}"
    )


def _algorithms(algorithms: tuple[int, int, int]) -> str:
    return "/".join(str(a) for a in algorithms)


def recvfrom_never_blocks(mysocket: socket.socket, size: int) -> tuple[bytes, Any] | None:
    """Replacement for ``session._io_recvfrom``: one datagram, or None when none is queued."""
    try:
        return mysocket.recvfrom(size, socket.MSG_DONTWAIT)
    except OSError:
        return None


def io_wait_bounded(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
    """Replacement for ``session._io_wait`` that cannot lose a wake-up for long.

    Registers with the IO thread exactly like the original, then returns at
    once if the awaited packets are already queued, else sleeps at most
    :data:`POLL_CAP` (callers loop and re-check their own condition).
    """
    evt = threading.Event()
    if evq is not None:
        evq.append(evt)
    deadline = timeout + _session._monotonic_time()
    _session.ioqueue.append((deadline, evt, myaddr))
    if evq is None and _already_queued(myaddr):
        return
    if deadline < _session.selectdeadline:
        _wake_io_thread()
    evt.wait(max(0.0, min(timeout, POLL_CAP)))


def _already_queued(myaddr: Any) -> bool:
    """Whether packets the caller waits for were read before it registered.

    A directed waiter is a session in ``awaitresponse``, which drains its own
    queue when we return; idle sessions' stray packets are not its business
    (returning for them would only make it spin).
    """
    if myaddr is None:
        return bool(_session.sessionqueue)
    handlers = _session.Session.bmc_handlers.get(myaddr) or {}
    return any(s.pktqueue and s.awaitingresponse for s in list(handlers.values()))


def _wake_io_thread() -> None:
    """Break the IO thread out of select(), as the original ``_io_wait`` does."""
    intsock = _session.iosockets[0]
    intsock.sendto(b"\x01", (_session.myself, intsock.getsockname()[1]))


def _check_version() -> None:
    from importlib.metadata import version

    installed = version("pyghmi")
    if not installed.startswith(PYGHMI_SERIES):
        raise RuntimeError(
            f"pyghmi {installed} installed; powerq's workarounds target "
            f"{PYGHMI_SERIES}x (see powerq/bmc/pyghmi_patches.py)"
        )
