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

from powerq.bmc import ipmi_errors, pyghmi_patches
from powerq.bmc.base import BmcTarget, BmcUnreachable, PowerDriver
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

    :raises BmcUnreachable: no answer during login (bounded by pyghmi, ~4-6 s).
    :raises BmcAuthError: the BMC refused the credentials.
    """
    pyghmi_patches.apply()
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
        self._call(f"chassis control {name!r}", CMD_CHASSIS_CONTROL, [code])

    def close(self) -> None:
        """Log out of this BMC's shared session (other drivers for it log in again)."""
        self._sessions.close(self.target)

    def _call(self, what: str, cmd: int, data: list[int]) -> dict[str, Any]:
        """One raw chassis command on the BMC's session; a failed session is dropped.

        :raises BmcError: mapped from pyghmi's exception or the completion code.
        """
        with self._sessions.lease(self.target) as lease:
            try:
                response = lease.session.raw_command(netfn=NETFN_CHASSIS, command=cmd, data=data)
            except Exception as exc:
                lease.invalidate()
                raise ipmi_errors.from_exception(exc, self.target, what) from exc
            if ipmi_errors.session_lost(response):
                lease.invalidate()
            error = ipmi_errors.from_response(response, self.target, what)
            if error is not None:
                raise error
            return dict(response)
