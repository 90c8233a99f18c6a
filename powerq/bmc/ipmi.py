"""The IPMI-over-LAN (RMCP+) power driver, on pyghmi.

Sessions come from one process-wide :class:`~powerq.bmc.ipmi_sessions.SessionCache`
(one per BMC, reused, never two at once); pyghmi's client bugs are worked
around in :mod:`powerq.bmc.pyghmi_patches`; its failures are translated in
:mod:`powerq.bmc.ipmi_errors`. Commands are sent raw (Get Chassis Status,
Chassis Control) so no vendor OEM probing happens on the way.

Login options (a node's ``ipmi_*`` fields, carried by :class:`BmcTarget`):

* ``cipher_suite``: "17" proposes suite 17 only (RAKP-HMAC-SHA256), "3" suite 3
  only (RAKP-HMAC-SHA1), "auto" proposes 17 and falls back to 3 when the BMC
  refuses 17 or answers with other algorithms (see :mod:`~powerq.bmc.pyghmi_patches`,
  workaround 5); the suite that worked is remembered per BMC by the session
  cache. A suite the BMC does not accept is a :class:`BmcProtocolError`
  ("the BMC did not accept cipher suite 17; set ipmi_cipher_suite to 3 or auto").
* ``privilege``: "operator" (IPMI level 3) or "administrator" (level 4) is
  requested at login. Power control needs operator.
* ``kg``: the BMC key (K_G), or None when the BMC has none (the password is
  then used in its place, as the IPMI specification says). Accepted as text,
  used as its UTF-8 bytes, as ``ipmitool -k`` takes it; or as hexadecimal with
  a ``0x`` prefix (``0x0102ab...``), the digits ``ipmitool -y`` takes. At most
  20 bytes either way. A text key that itself starts with ``0x`` followed by
  only hex digits must be given in its hex form.
"""

from __future__ import annotations

import logging
from typing import Any

from pyghmi.ipmi.command import Command

from powerq.bmc import ipmi_boot, ipmi_errors, ipmi_probe, pyghmi_patches
from powerq.bmc.base import (
    BmcAckUnknown,
    BmcAuthError,
    BmcError,
    BmcProtocolError,
    BmcTarget,
    BmcUnreachable,
    PowerDriver,
)
from powerq.bmc.ipmi_sessions import SessionCache
from powerq.states import Action, BootDevice, PowerState

_log = logging.getLogger(__name__)

NETFN_CHASSIS = 0x00
NETFN_APP = 0x06
CMD_GET_DEVICE_ID = 0x01
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


PRIVILEGE_LEVELS = {"operator": 3, "administrator": 4}
CIPHER_SUITES = ("auto", "3", "17")
KG_MAX_BYTES = 20


def parse_kg(kg: str) -> bytes:
    """The key bytes of a Kg as a node stores it: ``0x`` + hex digits, or text.

    :raises ValueError: empty, odd or invalid hex, or longer than 20 bytes.
    """
    if kg[:2].lower() == "0x" and _is_hex(kg[2:]):
        if len(kg) % 2:
            raise ValueError("a hex Kg needs an even number of digits after 0x")
        key = bytes.fromhex(kg[2:])
    else:
        key = kg.encode()
    if not key:
        raise ValueError("Kg is empty (leave it unset when the BMC has no key)")
    if len(key) > KG_MAX_BYTES:
        raise ValueError(f"Kg is {len(key)} bytes; IPMI keys have at most {KG_MAX_BYTES}")
    return key


def _is_hex(digits: str) -> bool:
    return bool(digits) and all(c in "0123456789abcdefABCDEF" for c in digits)


def login_options(target: BmcTarget) -> tuple[str, int, bytes | None]:
    """(cipher suite, pyghmi privilege level, Kg bytes) for ``target``.

    :raises BmcProtocolError: an unknown cipher suite or privilege name.
    :raises BmcAuthError: a Kg that cannot be a key (never shown in the message).
    """
    if target.cipher_suite not in CIPHER_SUITES:
        raise _option_error(BmcProtocolError, target, f"cipher suite {target.cipher_suite!r}")
    if target.privilege not in PRIVILEGE_LEVELS:
        raise _option_error(BmcProtocolError, target, f"privilege {target.privilege!r}")
    try:
        kg = parse_kg(target.kg) if target.kg is not None else None
    except ValueError as exc:
        raise _option_error(BmcAuthError, target, f"Kg ({exc})") from None
    return target.cipher_suite, PRIVILEGE_LEVELS[target.privilege], kg


def _option_error(kind: type[BmcError], target: BmcTarget, what: str) -> BmcError:
    return kind(
        f"IPMI login at {target.label}: the node's {what} cannot be used; "
        f"cipher suite is one of {', '.join(CIPHER_SUITES)}, privilege one of "
        f"{', '.join(PRIVILEGE_LEVELS)}, Kg text or 0x-prefixed hex of at most "
        f"{KG_MAX_BYTES} bytes",
        address=target.address,
        port=target.port,
    )


def connect(target: BmcTarget) -> Any:
    """Log in to ``target`` and return the pyghmi ``Command`` holding the session.

    Proposes the target's cipher suite(s), requests its privilege level and
    uses its Kg (see the module docstring). Credentials go to pyghmi as bytes:
    its session cache compares bytes, and ``str`` credentials make a second
    ``Command`` to the same BMC hang.

    :raises BmcUnreachable: no answer to the probe (< 1 s) or during login.
    :raises BmcAuthError: the BMC refused the credentials (password, user,
        privilege or Kg), or the Kg is malformed.
    :raises BmcProtocolError: the BMC did not accept the cipher suite, or its
        answers cannot be used; or an option is unknown.
    """
    suite, privlevel, kg = login_options(target)
    pyghmi_patches.apply()
    ipmi_probe.ensure_answering(target)  # a dead BMC costs < 1 s, not a login's retries
    try:
        with pyghmi_patches.wanted_suite(target.address, target.port, suite):
            command = Command(
                bmc=target.address,
                userid=target.username.encode(),
                password=target.password.encode(),
                port=target.port,
                kg=kg,
                privlevel=privlevel,
            )
    except Exception as exc:
        raise ipmi_errors.from_exception(exc, target, "login") from exc
    pyghmi_patches.bound_session(command.ipmi_session)
    return command


def negotiated_suite(command: Any) -> str:
    """The cipher suite ("3" or "17") a logged-in ``Command``'s session uses."""
    return pyghmi_patches.negotiated_suite(command.ipmi_session)


def disconnect(command: Any) -> None:
    """Close the session (Close Session is sent once, unacknowledged); never raises."""
    try:
        command.ipmi_session.logout()
    except Exception:  # best effort: the session is being thrown away anyway
        _log.debug("IPMI logout failed", exc_info=True)


def keep_alive(command: Any) -> None:
    """Keep a logged-in ``Command``'s session alive at its BMC: one Get Device ID,
    transmitted once (the session cache calls this for quiet sessions).

    :raises BmcUnreachable: no answer, or an error answer (the cache drops the session).
    :raises pyghmi.exceptions.IpmiException: the session is no longer usable.
    """
    response = pyghmi_patches.send_once(
        command.ipmi_session,
        NETFN_APP,
        CMD_GET_DEVICE_ID,
        [],
        wait_s=pyghmi_patches.READ_ANSWER_WAIT_S,
    )
    if ipmi_errors.session_lost(response) or response is None or response.get("code"):
        raise BmcUnreachable("IPMI keep-alive (Get Device ID) unanswered or refused")


SESSIONS = SessionCache(connect, disconnect, suite_of=negotiated_suite, keepalive=keep_alive)


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

    def set_boot_device(self, device: BootDevice, *, persistent: bool) -> None:
        """Set the boot flags (System Boot Options, parameter 5). Safe to repeat.

        :raises BmcUnreachable: no answer in time (transient).
        :raises BmcAuthError: credentials refused (permanent).
        :raises BmcCommandRejected: the BMC refused it (e.g. 0xC1: not supported).
        """
        data = ipmi_boot.set_request(device, persistent=persistent)
        self._call(f"set boot device {device.value}", ipmi_boot.CMD_SET_SYSTEM_BOOT_OPTIONS, data)

    def get_boot_device(self) -> BootDevice | None:
        """The boot device in the BMC's boot flags (None: no override set, or unknown).

        :raises BmcUnreachable: no answer in time (transient).
        :raises BmcAuthError: credentials refused (permanent).
        :raises BmcProtocolError: the answer is not boot flags.
        """
        response = self._call(
            "get boot device", ipmi_boot.CMD_GET_SYSTEM_BOOT_OPTIONS, ipmi_boot.get_request()
        )
        try:
            device, _ = ipmi_boot.parse_get_response(bytes(response.get("data") or b""))
        except ValueError as exc:
            raise BmcProtocolError(
                f"IPMI get boot device at {self.target.label}: {exc}",
                address=self.target.address,
                port=self.target.port,
            ) from exc
        return device

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
                # Busy or refused: it did not run. Silence, 0xC3 or 0xCE: maybe it did.
                raise self._unanswered(error, what, sent=once and ipmi_errors.maybe_ran(response))
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
