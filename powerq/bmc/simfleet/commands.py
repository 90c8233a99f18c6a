"""The IPMI commands a simulated BMC answers, and the dispatch table.

Anything not in :data:`COMMANDS` is answered with completion code 0xC1
("invalid command"), which is what clients expect from a BMC that lacks it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from powerq.bmc import ipmi_boot
from powerq.bmc.simfleet.cmdlog import LogEntry
from powerq.bmc.simfleet.crypto import SUPPORTED_SUITES
from powerq.bmc.simfleet.faults import Faults
from powerq.bmc.simfleet.ipmimsg import Request
from powerq.bmc.simfleet.machine import Machine
from powerq.bmc.simfleet.sessions import (
    PRIV_OPERATOR,
    PRIV_USER,
    Session,
    SessionTable,
)

NETFN_CHASSIS = 0x00
NETFN_APP = 0x06
CC_OK = 0x00
CC_INVALID_COMMAND = 0xC1
CC_BAD_LENGTH = 0xC7
CC_INVALID_DATA = 0xCC
CC_INSUFFICIENT_PRIVILEGE = 0xD4
CC_PRIV_EXCEEDS_LIMIT = 0x81
CC_INVALID_SESSION = 0x87
LAN_CHANNEL = 0x01
CURRENT_CHANNEL = 0x0E
MANUFACTURER_ID = 32473  # IANA's documentation enterprise number: no vendor OEM quirks
PRODUCT_ID = 0x0001


@dataclass
class Context:
    """What a command handler may look at or change."""

    machine: Machine
    faults: Faults
    sessions: SessionTable
    session: Session | None
    guid: bytes
    entry: LogEntry


Result = tuple[int, bytes]
Handler = Callable[[Context, Request], Result]


@dataclass(frozen=True)
class Command:
    """A supported command: log name, handler, and who may send it."""

    name: str
    handler: Handler
    min_privilege: int = PRIV_USER
    sessionless: bool = False


def dispatch(ctx: Context, request: Request) -> Result:
    """Run ``request`` and return (completion code, response data)."""
    command = COMMANDS.get((request.netfn, request.cmd))
    if command is None:
        return CC_INVALID_COMMAND, b""
    if not _allowed(command, ctx.session):
        return CC_INSUFFICIENT_PRIVILEGE, b""
    if request.netfn == NETFN_CHASSIS:
        failure = ctx.faults.flaky_failure()
        if failure:
            return failure, b""
    return command.handler(ctx, request)


def command_name(request: Request) -> str:
    """The log name of ``request`` (``netfn_0xNN_cmd_0xNN`` when unsupported)."""
    command = COMMANDS.get((request.netfn, request.cmd))
    if command is None:
        return f"netfn_{request.netfn:#04x}_cmd_{request.cmd:#04x}"
    return command.name


def _allowed(command: Command, session: Session | None) -> bool:
    if session is None:
        return command.sessionless
    return session.privilege >= command.min_privilege


def _auth_capabilities(ctx: Context, request: Request) -> Result:
    if not request.data or (request.data[0] & 0x0F) not in (LAN_CHANNEL, CURRENT_CHANNEL):
        return CC_INVALID_DATA, b""
    v2_data = 0x80 if request.data[0] & 0x80 else 0x00
    # no IPMI 1.5 auth types; non-null user names; RMCP+ (v2.0) only
    return CC_OK, bytes((LAN_CHANNEL, v2_data, 0x04, 0x02, 0, 0, 0, 0))


def _cipher_suites(ctx: Context, request: Request) -> Result:
    if len(request.data) < 3:
        return CC_BAD_LENGTH, b""
    if request.data[1] != 0:  # only the IPMI payload type
        return CC_INVALID_DATA, b""
    if request.data[2] & 0x80:
        listing = b"".join(suite.record() for suite in SUPPORTED_SUITES)
    else:
        listing = bytes(sorted({b for suite in SUPPORTED_SUITES for b in suite.record()[2:]}))
    index = request.data[2] & 0x3F
    return CC_OK, bytes((LAN_CHANNEL,)) + listing[16 * index : 16 * index + 16]


def _system_guid(ctx: Context, request: Request) -> Result:
    return CC_OK, ctx.guid


def _device_id(ctx: Context, request: Request) -> Result:
    manufacturer = struct.pack("<I", MANUFACTURER_ID)[:3]
    return CC_OK, (
        bytes((0x20, 0x01, 0x01, 0x00, 0x02, 0x9F))
        + manufacturer
        + struct.pack("<H", PRODUCT_ID)
        + b"\0\0\0\0"
    )


def _set_privilege(ctx: Context, request: Request) -> Result:
    session = ctx.session
    assert session is not None  # not sessionless: dispatch checked
    if not request.data:
        return CC_BAD_LENGTH, b""
    wanted = request.data[0] & 0x0F
    if wanted > session.max_privilege:
        return CC_PRIV_EXCEEDS_LIMIT, b""
    if wanted:
        session.privilege = wanted
    return CC_OK, bytes((session.privilege,))


def _close_session(ctx: Context, request: Request) -> Result:
    if len(request.data) < 4:
        return CC_BAD_LENGTH, b""
    target = struct.unpack_from("<I", request.data)[0]
    return (CC_OK if ctx.sessions.close(target) else CC_INVALID_SESSION), b""


def _chassis_status(ctx: Context, request: Request) -> Result:
    power = 0x01 if ctx.machine.powered else 0x00
    return CC_OK, bytes((power | 0x20, 0x00, 0x00, 0x00))  # restore policy: previous state


def _chassis_control(ctx: Context, request: Request) -> Result:
    if not request.data:
        return CC_BAD_LENGTH, b""
    code = ctx.machine.chassis_control(request.data[0] & 0x0F, ctx.entry, stuck=ctx.faults.stuck)
    return code, b""


def _set_boot_options(ctx: Context, request: Request) -> Result:
    if len(request.data) < 3:
        return CC_BAD_LENGTH, b""
    if request.data[0] & 0x7F != ipmi_boot.PARAM_BOOT_FLAGS:
        return CC_OK, b""  # other parameters (set-in-progress, ...) are accepted and ignored
    ctx.machine.boot_flags = bytes(request.data[1:6]).ljust(5, b"\x00")
    return CC_OK, b""


def _get_boot_options(ctx: Context, request: Request) -> Result:
    if not request.data or request.data[0] & 0x7F != ipmi_boot.PARAM_BOOT_FLAGS:
        return 0x80, b""  # parameter not supported
    return CC_OK, bytes((0x01, ipmi_boot.PARAM_BOOT_FLAGS)) + ctx.machine.boot_flags


COMMANDS: dict[tuple[int, int], Command] = {
    (NETFN_APP, 0x38): Command("get_channel_auth_caps", _auth_capabilities, sessionless=True),
    (NETFN_APP, 0x54): Command("get_channel_cipher_suites", _cipher_suites, sessionless=True),
    (NETFN_APP, 0x37): Command("get_system_guid", _system_guid, sessionless=True),
    (NETFN_APP, 0x01): Command("get_device_id", _device_id),
    (NETFN_APP, 0x3B): Command("set_session_privilege", _set_privilege),
    (NETFN_APP, 0x3C): Command("close_session", _close_session),
    (NETFN_CHASSIS, 0x01): Command("get_chassis_status", _chassis_status),
    (NETFN_CHASSIS, 0x02): Command(
        "chassis_control", _chassis_control, min_privilege=PRIV_OPERATOR
    ),
    (NETFN_CHASSIS, ipmi_boot.CMD_SET_SYSTEM_BOOT_OPTIONS): Command(
        "set_boot_options", _set_boot_options, min_privilege=PRIV_OPERATOR
    ),
    (NETFN_CHASSIS, ipmi_boot.CMD_GET_SYSTEM_BOOT_OPTIONS): Command(
        "get_boot_options", _get_boot_options
    ),
}
