"""The Redfish brain of one simulated BMC: a parsed request in, a response out.

No sockets and no event loop here (that is :mod:`.redfishendpoint`), so every
path can be exercised directly. It drives the same :class:`~.machine.Machine`,
:class:`~.faults.Faults` and :class:`~.cmdlog.CommandLog` as the IPMI
responder: a ``ComputerSystem.Reset`` is logged as a ``chassis_control`` entry
whose ``action`` is the IPMI name of the same operation, so
:mod:`.executions` and the overlap detector read both personalities alike.

Every request is logged; ``completion_code`` is 0 for a 2xx answer, else the
HTTP status, except for ``chassis_control`` entries, which keep the machine's
IPMI completion code (0 ran, 0xD5 refused because the machine is off, a
``flaky`` code) with the HTTP status in ``detail``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from powerq.bmc import ipmi_boot
from powerq.bmc.simfleet import redfishdocs as docs
from powerq.bmc.simfleet.cmdlog import CommandLog, LogEntry
from powerq.bmc.simfleet.faults import Faults
from powerq.bmc.simfleet.http11 import Request, Response
from powerq.bmc.simfleet.httpsessions import HttpSession, TokenTable
from powerq.bmc.simfleet.machine import CC_NOT_IN_PRESENT_STATE, CC_OK, ChassisControl, Machine
from powerq.states import BootDevice

RESET_COMMANDS: dict[str, ChassisControl] = {
    "On": ChassisControl.POWER_UP,
    "ForceOff": ChassisControl.POWER_DOWN,
    "GracefulShutdown": ChassisControl.SOFT_SHUTDOWN,
    "ForceRestart": ChassisControl.HARD_RESET,
    "PowerCycle": ChassisControl.POWER_CYCLE,
}
BOOT_DEVICES: dict[str, BootDevice] = {
    "Pxe": BootDevice.PXE,
    "Hdd": BootDevice.DISK,
    "Cd": BootDevice.CDROM,
    "BiosSetup": BootDevice.BIOS,
}
_TARGET_OF = {device: name for name, device in BOOT_DEVICES.items()}

Handler = Callable[["RedfishResponder", Request, "re.Match[str]", LogEntry], Response]


@dataclass(frozen=True)
class Credentials:
    """The one account of the BMC (the password is never shown)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class _Route:
    command: str
    handler: Handler
    public: bool = False


@dataclass
class RedfishResponder:
    """Everything one Redfish BMC knows about its one system, and how it answers."""

    account: Credentials
    system_id: str
    uuid: str
    machine: Machine
    faults: Faults
    sessions: TokenTable
    log: CommandLog
    clock: Callable[[], float]

    @property
    def system_path(self) -> str:
        """``/redfish/v1/Systems/<id>``: this BMC's one system."""
        return f"{docs.SYSTEMS}/{self.system_id}"

    def handle(self, request: Request) -> Response:
        """Answer one request: 404 unknown path, 405 wrong method, 401 not logged in."""
        path = request.path.rstrip("/") or "/"
        for pattern, methods in _ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            route = methods.get(request.method)
            if route is None:
                entry = self.log.record(f"http_{request.method.lower()}")
                allow = ", ".join(sorted(methods))
                return _finish(
                    entry, _error(405, "ActionNotSupported", "method not allowed"), allow
                )
            return self._run(route, request, match)
        entry = self.log.record(f"http_{request.method.lower()}", detail=path)
        return _finish(entry, _error(404, "ResourceMissingAtURI", f"no resource at {path}"))

    # --- authentication -------------------------------------------------------------

    def _run(self, route: _Route, request: Request, match: re.Match[str]) -> Response:
        caller: HttpSession | None = None
        if not route.public:
            allowed, caller = self._authenticate(request)
            if not allowed:
                entry = self.log.record(route.command, detail="no valid credentials")
                return _finish(entry, _unauthorized())
        entry = self.log.record(route.command, caller.id if caller else None)
        return _finish(entry, route.handler(self, request, match, entry))

    def _authenticate(self, request: Request) -> tuple[bool, HttpSession | None]:
        """(allowed, session): an X-Auth-Token of a live session, or HTTP Basic."""
        token = request.headers.get("x-auth-token")
        if token:
            session = self.sessions.by_token(token, self.clock())
            return session is not None, session
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            username, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False, None
        return self._password_ok(username, password), None

    def _password_ok(self, username: str, password: str) -> bool:
        if self.faults.wrong_credentials:  # the BMC holds another password now
            return False
        same_user = hmac.compare_digest(username.encode(), self.account.username.encode())
        same_password = hmac.compare_digest(password.encode(), self.account.password.encode())
        return same_user and same_password

    # --- resources ------------------------------------------------------------------

    def versions(self, request: Request, match: re.Match[str], entry: LogEntry) -> Response:
        return Response(200, docs.versions())

    def root(self, request: Request, match: re.Match[str], entry: LogEntry) -> Response:
        return Response(200, docs.service_root(self.uuid))

    def session_service(self, request: Request, match: re.Match[str], entry: LogEntry) -> Response:
        return Response(200, docs.session_service(self.sessions.idle_timeout))

    def list_sessions(self, request: Request, match: re.Match[str], entry: LogEntry) -> Response:
        ids = self.sessions.ids(self.clock())
        paths = [f"{docs.SESSIONS}/{i}" for i in ids]
        return Response(200, docs.collection(docs.SESSIONS, "Session", paths))

    def login(self, request: Request, match: re.Match[str], entry: LogEntry) -> Response:
        body = _json_object(request)
        if body is None:
            return _error(400, "MalformedJSON", "the body must be a JSON object")
        username, password = body.get("UserName"), body.get("Password")
        if not isinstance(username, str) or not isinstance(password, str):
            return _error(400, "PropertyMissing", "UserName and Password are required")
        if not self._password_ok(username, password):
            return _unauthorized()
        session = self.sessions.open(username, self.clock())
        if session is None:
            return _error(503, "SessionLimitExceeded", "too many sessions; log one out first")
        entry.session_id = session.id
        location = f"{docs.SESSIONS}/{session.id}"
        headers = {"X-Auth-Token": session.token, "Location": location}
        return Response(201, docs.session(session.id, username), headers)

    def get_session(self, request: Request, match: re.Match[str], entry: LogEntry) -> Response:
        session = self.sessions.by_id(int(match["id"]))
        if session is None:
            return _error(404, "ResourceMissingAtURI", f"no session {match['id']}")
        return Response(200, docs.session(session.id, session.username))

    def logout(self, request: Request, match: re.Match[str], entry: LogEntry) -> Response:
        if not self.sessions.close(int(match["id"])):
            return _error(404, "ResourceMissingAtURI", f"no session {match['id']}")
        return Response(204)

    def list_systems(self, request: Request, match: re.Match[str], entry: LogEntry) -> Response:
        return Response(200, docs.collection(docs.SYSTEMS, "ComputerSystem", [self.system_path]))

    def get_system(self, request: Request, match: re.Match[str], entry: LogEntry) -> Response:
        missing = self._missing(match)
        if missing is not None:
            return missing
        flaky = self.faults.flaky_failure()
        if flaky:
            return _busy(entry, flaky)
        return Response(200, self._system_document())

    def patch_system(self, request: Request, match: re.Match[str], entry: LogEntry) -> Response:
        missing = self._missing(match)
        if missing is not None:
            return missing
        body = _json_object(request)
        if body is None or set(body) - {"Boot"} or not isinstance(body.get("Boot"), dict):
            return _error(400, "PropertyUnknown", "only Boot can be changed on this system")
        refused = self._set_boot(body["Boot"], entry)
        return refused or Response(200, self._system_document())

    def reset(self, request: Request, match: re.Match[str], entry: LogEntry) -> Response:
        missing = self._missing(match)
        if missing is not None:
            return missing
        body = _json_object(request) or {}
        reset_type = body.get("ResetType")
        command = RESET_COMMANDS.get(reset_type) if isinstance(reset_type, str) else None
        if command is None:
            offered = ", ".join(docs.RESET_TYPES)
            message = f"ResetType {reset_type!r} is not one of {offered}"
            return _error(400, "ActionParameterNotSupported", message)
        entry.detail = f"ResetType {reset_type}"
        flaky = self.faults.flaky_failure()
        if flaky:
            return _busy(entry, flaky)
        code = self.machine.chassis_control(command, entry, stuck=self.faults.stuck)
        entry.completion_code = code
        if code == CC_OK:
            return Response(204)
        if code == CC_NOT_IN_PRESENT_STATE:
            message = f"ResetType {reset_type} is not allowed while the system is off"
            return _error(409, "ActionNotSupported", message)
        return _error(400, "ActionParameterNotSupported", f"ResetType {reset_type} refused")

    # --- helpers --------------------------------------------------------------------

    def _missing(self, match: re.Match[str]) -> Response | None:
        if match["system"] == self.system_id:
            return None
        return _error(404, "ResourceMissingAtURI", f"no system {match['system']}")

    def _system_document(self) -> dict[str, Any]:
        device, persistent = ipmi_boot.parse_flags(self.machine.boot_flags)
        target = _TARGET_OF[device] if device is not None else "None"
        enabled = "Disabled" if device is None else ("Continuous" if persistent else "Once")
        return docs.system(self.system_path, self.system_id, self._power_state(), target, enabled)

    def _power_state(self) -> str:
        heading, powered = self.machine.heading, self.machine.powered
        if heading is not None and heading != powered:
            return "PoweringOn" if heading else "PoweringOff"
        return "On" if powered else "Off"

    def _set_boot(self, boot: dict[str, Any], entry: LogEntry) -> Response | None:
        """Apply a Boot PATCH (either property may be left out); a 400 answer if refused.

        A target named alone while the override is disabled turns it on ``Once``.
        """
        if set(boot) - {"BootSourceOverrideTarget", "BootSourceOverrideEnabled"}:
            return _error(400, "PropertyUnknown", "only the boot source override can be set")
        device, persistent = ipmi_boot.parse_flags(self.machine.boot_flags)
        current = "Disabled" if device is None else ("Continuous" if persistent else "Once")
        if current == "Disabled" and "BootSourceOverrideTarget" in boot:
            current = "Once"
        target = boot.get("BootSourceOverrideTarget", _TARGET_OF[device] if device else "None")
        enabled = boot.get("BootSourceOverrideEnabled", current)
        if target not in docs.BOOT_TARGETS or enabled not in docs.BOOT_ENABLED:
            message = f"boot target {target!r} / enabled {enabled!r} not supported"
            return _error(400, "PropertyValueNotInList", message)
        if target == "None" or enabled == "Disabled":
            self.machine.boot_flags = bytes(5)
            entry.detail = "boot override disabled"
            return None
        data = ipmi_boot.set_request(BOOT_DEVICES[str(target)], persistent=enabled == "Continuous")
        self.machine.boot_flags = bytes(data[1:6])
        entry.detail = f"boot {target} {enabled}"
        return None


def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        body = request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _error(status: int, message_id: str, message: str) -> Response:
    return Response(status, docs.error(message_id, message))


def _unauthorized() -> Response:
    response = _error(401, "NoValidSession", "credentials refused or session expired")
    response.headers["WWW-Authenticate"] = 'Basic realm="powerq simulated BMC"'
    return response


def _busy(entry: LogEntry, code: int) -> Response:
    entry.completion_code = code
    entry.detail = f"flaky: failed with {code:#04x}"
    return _error(503, "ServiceTemporarilyUnavailable", "the BMC is busy; try again")


def _finish(entry: LogEntry, response: Response, allow: str = "") -> Response:
    """Stamp the log entry with the answer's status; add ``Allow`` to a 405."""
    if allow:
        response.headers["Allow"] = allow
    status_note = f"HTTP {response.status}"
    entry.detail = f"{entry.detail}; {status_note}" if entry.detail else status_note
    if entry.command != "chassis_control":
        entry.completion_code = 0 if response.status < 400 else response.status
    elif response.status >= 400 and not entry.completion_code:  # refused before the machine
        entry.completion_code = response.status
    return response


_SYSTEM = r"/redfish/v1/Systems/(?P<system>[^/]+)"
_ROUTES: list[tuple[re.Pattern[str], dict[str, _Route]]] = [
    (re.compile(f"^{pattern}$"), methods)
    for pattern, methods in (
        ("/redfish", {"GET": _Route("get_versions", RedfishResponder.versions, public=True)}),
        ("/redfish/v1", {"GET": _Route("get_service_root", RedfishResponder.root, public=True)}),
        (
            "/redfish/v1/SessionService",
            {"GET": _Route("get_session_service", RedfishResponder.session_service)},
        ),
        (
            "/redfish/v1/SessionService/Sessions",
            {
                "GET": _Route("get_sessions", RedfishResponder.list_sessions),
                "POST": _Route("create_session", RedfishResponder.login, public=True),
            },
        ),
        (
            r"/redfish/v1/SessionService/Sessions/(?P<id>\d{1,9})",
            {
                "GET": _Route("get_session", RedfishResponder.get_session),
                "DELETE": _Route("delete_session", RedfishResponder.logout),
            },
        ),
        ("/redfish/v1/Systems", {"GET": _Route("get_systems", RedfishResponder.list_systems)}),
        (
            _SYSTEM,
            {
                "GET": _Route("get_system", RedfishResponder.get_system),
                "PATCH": _Route("set_boot", RedfishResponder.patch_system),
            },
        ),
        (
            _SYSTEM + re.escape(docs.RESET_SUFFIX),
            {"POST": _Route("chassis_control", RedfishResponder.reset)},
        ),
    )
]
