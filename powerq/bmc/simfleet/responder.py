"""The protocol brain of one simulated BMC: a datagram in, the reply datagram out.

No sockets and no event loop here (that is :mod:`.endpoint`), so every path
can be exercised directly. Malformed or unauthenticated input is dropped
silently (``None``), as a BMC does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from powerq.bmc.simfleet import crypto, handshake, wire
from powerq.bmc.simfleet.cmdlog import CommandLog
from powerq.bmc.simfleet.commands import Context, command_name, dispatch
from powerq.bmc.simfleet.faults import Faults
from powerq.bmc.simfleet.handshake import Account, Outcome
from powerq.bmc.simfleet.ipmimsg import MessageError, build_response, parse_request
from powerq.bmc.simfleet.machine import Machine
from powerq.bmc.simfleet.sessions import Session, SessionTable
from powerq.bmc.simfleet.wire import Datagram, PayloadType, WireError

_WRONG_PASSWORD_SUFFIX = b"\x00rotated"


@dataclass
class Responder:
    """Everything one BMC knows, and how it answers each kind of datagram."""

    account: Account
    guid: bytes
    machine: Machine
    faults: Faults
    sessions: SessionTable
    log: CommandLog
    clock: Callable[[], float]

    def handle(self, data: bytes) -> bytes | None:
        """The reply to one inbound datagram, or None to stay silent."""
        try:
            return self._route(wire.parse(data))
        except (WireError, MessageError, crypto.CryptoError, IndexError):
            return None

    def _route(self, dgram: Datagram) -> bytes | None:
        if not dgram.v2:
            return wire.build_v15(self._run(dgram.payload, None))
        if dgram.payload_type == PayloadType.IPMI:
            return self._ipmi(dgram)
        outcome = self._handshake_step(dgram)
        if outcome is None:
            return None
        return self._handshake(dgram.payload_type, outcome)

    def _handshake_step(self, dgram: Datagram) -> Outcome | None:
        now, table = self.clock(), self.sessions
        if dgram.payload_type == PayloadType.OPEN_SESSION_REQUEST:
            only3 = self.faults.suite3_only_accepts_any
            return handshake.open_session(dgram.payload, table, now, suite3_accepts_any=only3)
        if dgram.payload_type == PayloadType.RAKP1:
            return handshake.rakp1(dgram.payload, table, self._account(), self.guid, now)
        if dgram.payload_type == PayloadType.RAKP3:
            return handshake.rakp3(dgram.payload, table, self._account(), self.guid, now)
        return None

    def _handshake(self, request_type: int, outcome: Outcome) -> bytes | None:
        session_id = outcome.session.bmc_id if outcome.session else None
        name = PayloadType(request_type).name.lower()
        detail = f"status {outcome.status:#04x}"
        if outcome.session is not None:
            detail += f", cipher suite {outcome.session.suite.suite_id}"
        self.log.record(name, session_id, completion_code=outcome.status, detail=detail)
        if not outcome.reply:
            return None
        return wire.build_v2(request_type + 1, 0, 0, outcome.reply)

    def _ipmi(self, dgram: Datagram) -> bytes | None:
        if dgram.session_id == 0:
            return wire.build_v2(PayloadType.IPMI, 0, 0, self._run(dgram.payload, None))
        session = self.sessions.get(dgram.session_id, self.clock())
        if session is None or session.keys is None or not _verified(session, dgram):
            return None
        payload = (
            crypto.decrypt(session.keys.aes_key, dgram.payload)
            if dgram.encrypted
            else dgram.payload
        )
        return _seal(session, self._answer(payload, session))

    def _answer(self, message: bytes, session: Session) -> bytes:
        """Run an in-session request, or replay the answer to a retransmitted one.

        A client that timed out resends the identical message (same rqSeq):
        like a careful BMC, answer it again without executing it twice. The log
        shows it as ``retransmission`` so ``chassis_control`` entries are the
        commands that really ran. Under the ``executes_retransmissions`` fault
        it runs every copy, as a careless BMC does.
        """
        previous = session.last_exchange
        careful = not self.faults.executes_retransmissions
        if careful and previous is not None and previous[0] == message:
            name = command_name(parse_request(message))
            self.log.record(
                "retransmission", session.bmc_id, detail=f"{name} answered again, not run again"
            )
            return previous[1]
        response = self._run(message, session)
        session.last_exchange = (message, response)
        return response

    def _run(self, message: bytes, session: Session | None) -> bytes:
        request = parse_request(message)
        entry = self.log.record(
            command_name(request), session.bmc_id if session is not None else None
        )
        ctx = Context(self.machine, self.faults, self.sessions, session, self.guid, entry)
        code, data = dispatch(ctx, request)
        entry.completion_code = code
        return build_response(request, code, data)

    def _account(self) -> Account:
        """The credentials the BMC holds now (rotated under the wrong_credentials fault)."""
        if not self.faults.wrong_credentials:
            return self.account
        return Account(self.account.username, self.account.password + _WRONG_PASSWORD_SUFFIX)


def _verified(session: Session, dgram: Datagram) -> bool:
    keys = session.keys
    if keys is None or not dgram.authenticated:
        return False
    expected = crypto.integrity_code(session.suite, keys.k1, dgram.signed)
    return crypto.codes_equal(expected, dgram.auth_code)


def _seal(session: Session, message: bytes) -> bytes:
    """Encrypt and sign an IPMI response for ``session``."""
    keys = session.keys
    assert keys is not None
    body = crypto.encrypt(keys.aes_key, message)
    packet = wire.build_v2(
        PayloadType.IPMI,
        session.console_id,
        session.next_sequence(),
        body,
        encrypted=True,
        authenticated=True,
    )
    return packet + crypto.integrity_code(session.suite, keys.k1, packet[4:])
