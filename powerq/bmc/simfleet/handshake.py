"""The BMC side of RMCP+ session establishment: Open Session and RAKP 1-4.

Each function takes the request payload and returns the response payload
(IPMI v2.0 section 13.17-13.23). The cipher suite is really negotiated: the
proposal must match suite 17 or 3 exactly, otherwise the answer is status
0x11 ("no cipher suite match"), which is what makes clients fall back. A BMC
in the ``suite3_only_accepts_any`` mode instead answers any proposal with
suite 3, without an error (as pyghmi's BMC server does).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from powerq.bmc.simfleet import crypto
from powerq.bmc.simfleet.sessions import PRIV_ADMIN, Session, SessionTable

STATUS_OK = 0x00
STATUS_NO_RESOURCES = 0x01
STATUS_INVALID_SESSION = 0x02
STATUS_INVALID_ROLE = 0x09
STATUS_UNAUTHORIZED_NAME = 0x0D
STATUS_INVALID_ICV = 0x0F
STATUS_NO_CIPHER_MATCH = 0x11
STATUS_ILLEGAL_PARAMETER = 0x12
_OPEN_REQUEST_LEN = 32
_RAKP1_MIN_LEN = 28
_RAKP3_MIN_LEN = 8


@dataclass(frozen=True)
class Account:
    """The one user a simulated BMC knows. ``password`` is what the BMC *holds*."""

    username: bytes
    password: bytes

    def __repr__(self) -> str:
        return f"Account(username={self.username!r}, password=<hidden>)"


@dataclass(frozen=True)
class Outcome:
    """A handshake step's reply payload and the session it concerns (if any)."""

    reply: bytes
    session: Session | None
    status: int


def open_session(
    payload: bytes, table: SessionTable, now: float, *, suite3_accepts_any: bool = False
) -> Outcome:
    """Answer an RMCP+ Open Session Request (``suite3_accepts_any``: always with suite 3)."""
    tag = payload[0] if payload else 0
    console_id = payload[4:8].ljust(4, b"\0")
    if len(payload) < _OPEN_REQUEST_LEN:
        return _open_error(tag, STATUS_ILLEGAL_PARAMETER, console_id)
    suite = crypto.match_suite(*(_proposed(payload, offset) for offset in (8, 16, 24)))
    if suite3_accepts_any:
        suite = crypto.SUITE_3
    if suite is None:
        return _open_error(tag, STATUS_NO_CIPHER_MATCH, console_id)
    requested = payload[1] & 0x0F
    if requested > PRIV_ADMIN:
        return _open_error(tag, STATUS_INVALID_ROLE, console_id)
    max_priv = requested or PRIV_ADMIN
    session = table.create(struct.unpack("<I", console_id)[0], suite, max_priv, now)
    if session is None:
        return _open_error(tag, STATUS_NO_RESOURCES, console_id)
    reply = (
        bytes((tag, STATUS_OK, max_priv, 0))
        + console_id
        + struct.pack("<I", session.bmc_id)
        + _algorithms(suite)
    )
    return Outcome(reply, session, STATUS_OK)


def rakp1(
    payload: bytes, table: SessionTable, account: Account, guid: bytes, now: float
) -> Outcome:
    """Answer RAKP Message 1 with RAKP Message 2 (the BMC proves it knows the password)."""
    tag = payload[0] if payload else 0
    session = _session_for(payload, table, now, _RAKP1_MIN_LEN)
    if session is None or session.active:
        return _rakp_error(tag, STATUS_INVALID_SESSION)
    role, name_len = payload[24], payload[27]
    username = payload[28 : 28 + name_len]
    if username != account.username:
        return _rakp_error(tag, STATUS_UNAUTHORIZED_NAME, session)
    if role & 0x0F > session.max_privilege:
        return _rakp_error(tag, STATUS_INVALID_ROLE, session)
    _remember_rakp1(session, payload[8:24], role, username)
    auth_code = session.suite.mac(account.password, _rakp2_input(session, guid))
    reply = (
        bytes((tag, STATUS_OK, 0, 0))
        + struct.pack("<I", session.console_id)
        + session.rc
        + guid
        + auth_code
    )
    return Outcome(reply, session, STATUS_OK)


def rakp3(
    payload: bytes, table: SessionTable, account: Account, guid: bytes, now: float
) -> Outcome:
    """Answer RAKP Message 3 with RAKP Message 4 and activate the session.

    A console that reports an error in RAKP 3 gets no answer and its session
    is dropped; a wrong RAKP 3 code is answered with status 0x0F.
    """
    tag = payload[0] if payload else 0
    session = _session_for(payload, table, now, _RAKP3_MIN_LEN)
    if session is None or not session.rc:
        return _rakp_error(tag, STATUS_INVALID_SESSION)
    if payload[1] != STATUS_OK:
        table.close(session.bmc_id)
        return Outcome(b"", session, payload[1])
    if not crypto.codes_equal(payload[8:], _rakp3_code(session, account)):
        table.close(session.bmc_id)
        return _rakp_error(tag, STATUS_INVALID_ICV, session)
    keys = crypto.derive_keys(
        session.suite, account.password, session.rm, session.rc, session.role, session.username
    )
    table.activate(session, keys)
    icv = session.suite.mac(keys.sik, session.rm + struct.pack("<I", session.bmc_id) + guid)
    reply = (
        bytes((tag, STATUS_OK, 0, 0))
        + struct.pack("<I", session.console_id)
        + icv[: session.suite.code_len]
    )
    return Outcome(reply, session, STATUS_OK)


def _proposed(payload: bytes, offset: int) -> int | None:
    """The algorithm proposed in one 8-byte slot; None for a "null" (any) proposal."""
    if payload[offset + 3] == 0:
        return None
    return payload[offset + 4] & 0x3F


def _algorithms(suite: crypto.CipherSuite) -> bytes:
    return b"".join(
        bytes((kind, 0, 0, 8, alg, 0, 0, 0))
        for kind, alg in ((0, suite.auth_alg), (1, suite.integrity_alg), (2, suite.conf_alg))
    )


def _open_error(tag: int, status: int, console_id: bytes) -> Outcome:
    return Outcome(bytes((tag, status, 0, 0)) + console_id, None, status)


def _rakp_error(tag: int, status: int, session: Session | None = None) -> Outcome:
    console_id = session.console_id if session is not None else 0
    return Outcome(bytes((tag, status, 0, 0)) + struct.pack("<I", console_id), session, status)


def _session_for(payload: bytes, table: SessionTable, now: float, min_len: int) -> Session | None:
    if len(payload) < min_len:
        return None
    return table.get(struct.unpack_from("<I", payload, 4)[0], now)


def _remember_rakp1(session: Session, rm: bytes, role: int, username: bytes) -> None:
    session.rm, session.role, session.username = rm, role, username
    session.rc = os.urandom(16)


def _rakp2_input(session: Session, guid: bytes) -> bytes:
    """SIDm | SIDc | Rm | Rc | GUIDc | ROLEm | ULENGTHm | UNAMEm."""
    return (
        struct.pack("<II", session.console_id, session.bmc_id)
        + session.rm
        + session.rc
        + guid
        + bytes((session.role, len(session.username)))
        + session.username
    )


def _rakp3_code(session: Session, account: Account) -> bytes:
    """HMAC_Kuid(Rc | SIDm | ROLEm | ULENGTHm | UNAMEm)."""
    data = (
        session.rc
        + struct.pack("<I", session.console_id)
        + bytes((session.role, len(session.username)))
        + session.username
    )
    return session.suite.mac(account.password, data)
