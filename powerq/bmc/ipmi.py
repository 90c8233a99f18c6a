"""The IPMI-over-LAN (RMCP+) power driver, on pyghmi.

Sessions come from one process-wide :class:`~powerq.bmc.ipmi_sessions.SessionCache`
(one per BMC, reused, never two at once); pyghmi's client bugs are worked
around in :mod:`powerq.bmc.pyghmi_patches`; its failures are translated in
:mod:`powerq.bmc.ipmi_errors`. Commands are sent raw (Get Chassis Status,
Chassis Control) so no vendor OEM probing happens on the way.
"""

from __future__ import annotations

import logging
from typing import Any

from pyghmi.ipmi.command import Command

from powerq.bmc import ipmi_errors, ipmi_probe, pyghmi_patches
from powerq.bmc.base import BmcAckUnknown, BmcError, BmcTarget, BmcUnreachable, PowerDriver
from powerq.bmc.ipmi_sessions import SessionCache
from powerq.states import Action, PowerState

_log = logging.getLogger(__name__)

NETFN_CHASSIS = 0x00
CMD_GET_CHASSIS_STATUS = 0x01
CMD_CHASSIS_CONTROL = 0x02

# Chassis Control request byte (IPMI v2.0 table 28-4) and how messages name it.
CHASSIS_CONTROL: dict[Action, tuple[int, str]] = {
    Action.OFF: (0x00, "power down"),
    Action.ON: (0x01, "power up"),
    Action.CYCLE: (0x02, "power cycle"),
    Action.RESET: (0x03, "hard reset"),
    Action.SOFT_OFF: (0x05, "soft shutdown"),
}


def connect(target: BmcTarget) -> Any:
    """Log in to ``target`` and return the pyghmi ``Command`` holding the session.

    Credentials go to pyghmi as bytes: its session cache compares bytes, and
    ``str`` credentials make a second ``Command`` to the same BMC hang.

    :raises BmcUnreachable: no answer to the probe (< 1 s) or during login.
    :raises BmcAuthError: the BMC refused the credentials.
    """
    pyghmi_patches.apply()
    ipmi_probe.ensure_answering(target)  # a dead BMC costs < 1 s, not a login's retries
    try:
        command = Command(
            bmc=target.address,
            userid=target.username.encode(),
            password=target.password.encode(),
            port=target.port,
        )
    except Exception as exc:
        raise ipmi_errors.from_exception(exc, target, "login") from exc
    pyghmi_patches.bound_session(command.ipmi_session)
    return command


def disconnect(command: Any) -> None:
    """Close the session (Close Session is sent once, unacknowledged); never raises."""
    try:
        command.ipmi_session.logout()
    except Exception:  # best effort: the session is being thrown away anyway
        _log.debug("IPMI logout failed", exc_info=True)


SESSIONS = SessionCache(connect, disconnect)


class IpmiDriver(PowerDriver):
    """One BMC over IPMI; cheap to create, the session lives in :data:`SESSIONS`."""

    def __init__(self, target: BmcTarget, sessions: SessionCache = SESSIONS) -> None:
        self.target = target
        self._sessions = sessions

    def __repr__(self) -> str:
        return f"IpmiDriver({self.target.label}, user={self.target.username!r})"

    def get_power_state(self) -> PowerState:
        """Read the power state with Get Chassis Status.

        :raises BmcUnreachable: no answer in time, or the BMC was busy (transient).
        :raises BmcAuthError: credentials refused (permanent).
        :raises BmcCommandRejected: the BMC refused the request (permanent).
        """
        response = self._call("power status read", CMD_GET_CHASSIS_STATUS, [])
        data = response.get("data") or b""
        if not data:
            raise BmcUnreachable(
                f"IPMI power status read at {self.target.label}: empty answer",
                address=self.target.address,
                port=self.target.port,
            )
        return PowerState.ON if data[0] & 0x01 else PowerState.OFF

    def send_power_action(self, action: Action) -> None:
        """Send Chassis Control for ``action``; returns once the BMC accepted it.

        :raises BmcUnreachable: no answer in time, or the BMC was busy (transient).
        :raises BmcAuthError: credentials refused (permanent).
        :raises BmcCommandRejected: refused, e.g. 0xD5 for a cycle/reset while off.
        :raises ValueError: ``action`` is ``query`` or otherwise not sendable.
        """
        if action not in CHASSIS_CONTROL:
            raise ValueError(f"{action!r} is not a power action a BMC can be sent")
        code, name = CHASSIS_CONTROL[action]
        self._call(f"chassis control {name!r}", CMD_CHASSIS_CONTROL, [code], once=True)

    def close(self) -> None:
        """Log out of this BMC's shared session (other drivers for it log in again)."""
        self._sessions.close(self.target)

    def _call(self, what: str, cmd: int, data: list[int], *, once: bool = False) -> dict[str, Any]:
        """One raw chassis command on the BMC's session; a failed session is dropped.

        Every request is transmitted exactly once (pyghmi never retransmits
        here). ``once``: a power-changing command; if no answer comes, it may
        or may not have run (:class:`BmcAckUnknown`). An unanswered read is
        plain :class:`BmcUnreachable` (the executor retries it later).

        :raises BmcAckUnknown: ``once`` and the command went out unanswered.
        :raises BmcError: mapped from pyghmi's exception or the completion code.
        """
        with self._sessions.lease(self.target) as lease:
            ipmi = lease.session.ipmi_session
            try:
                wait_s = (
                    pyghmi_patches.COMMAND_ANSWER_WAIT_S
                    if once
                    else pyghmi_patches.READ_ANSWER_WAIT_S
                )
                response = pyghmi_patches.send_once(ipmi, NETFN_CHASSIS, cmd, data, wait_s=wait_s)
            except Exception as exc:
                lease.invalidate()
                raise self._unanswered(exc, what, sent=once) from exc
            lost = ipmi_errors.session_lost(response)
            if lost:
                lease.invalidate()
            error = ipmi_errors.from_response(response, self.target, what)
            if error is not None:
                # An answer (busy, refused) means it did not run; silence means maybe.
                raise self._unanswered(error, what, sent=once and lost)
            assert response is not None  # from_response reports None as an error
            return dict(response)

    def _unanswered(self, exc: Exception, what: str, *, sent: bool) -> BmcError:
        """Map a failed call; for a command that went out unanswered, say "maybe sent"."""
        error = (
            exc if isinstance(exc, BmcError) else ipmi_errors.from_exception(exc, self.target, what)
        )
        if sent and isinstance(error, BmcUnreachable):
            return BmcAckUnknown(
                f"IPMI {what} at {self.target.label} was sent once and not answered "
                f"({error}): it may or may not have run",
                address=self.target.address,
                port=self.target.port,
            )
        return error
