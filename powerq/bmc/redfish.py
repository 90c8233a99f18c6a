"""The Redfish power driver, on OpenStack's sushy.

**Why sushy.** sushy is the Redfish client Ironic drives real fleets with, so
its connector already carries the field knowledge a BMC client needs:
session login with a fallback to HTTP Basic for BMCs whose SessionService is
missing or broken, a new login (and one re-send) when a BMC drops a session
with a 401, ETag handling for PATCH on BMCs that demand ``If-Match``, boot
settings that some BMCs keep in a ``@Redfish.Settings`` resource, and error
bodies parsed down to the ``@Message.ExtendedInfo`` text. DMTF's ``redfish``
package is a generic REST client (JSON in, JSON out, with a login): every
vendor quirk would be ours to find again, and its own request retry loop
(``max_retry``) would need the same taming as sushy's. powerq uses sushy for
the session, the reads and the boot PATCH, and keeps one thing for itself:
the power POST (see :mod:`powerq.bmc.redfish_wire`), which sushy would
re-send after a timeout and powerq must send exactly once. Its cost per call
against a plain ``requests`` session is measured by ``bench/redfish_cost.py``
(BENCHMARKS.md).

**What it does.** One logged-in client per BMC per process
(:mod:`powerq.bmc.redfish_sessions`), TLS verified unless the node says
otherwise (:mod:`powerq.bmc.redfish_tls`), connect and read timeouts of a few
seconds, failures mapped at this edge (:mod:`powerq.bmc.redfish_errors`).

=================  =====================================================
powerq             Redfish ``ComputerSystem.Reset`` ``ResetType``
=================  =====================================================
``on``             ``On``
``off``            ``ForceOff``
``soft_off``       ``GracefulShutdown``
``reset``          ``ForceRestart``
``cycle``          ``PowerCycle`` (only if offered; the executor itself does off, then on)
=================  =====================================================

``PowerState`` ``On``/``Off`` read as ON/OFF; ``PoweringOn``,
``PoweringOff`` and anything else as UNKNOWN ("not there yet").
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import requests
import sushy
from celery.exceptions import SoftTimeLimitExceeded
from sushy import auth as sushy_auth
from sushy import exceptions as sushy_exc

from powerq.bmc import redfish_errors, redfish_tls
from powerq.bmc.base import (
    BmcCommandRejected,
    BmcError,
    BmcProtocolError,
    BmcTarget,
    BmcUnreachable,
    PowerDriver,
)
from powerq.bmc.redfish_sessions import Lease, SessionCache
from powerq.bmc.redfish_wire import OnceConnector
from powerq.states import Action, BootDevice, PowerState

_log = logging.getLogger(__name__)
# What a BMC answers when it took a power command (204, 200, or 202 with a task).
ACCEPTED_STATUSES = frozenset({200, 202, 204})

SYSTEMS_PREFIX = "/redfish/v1/Systems/"
RESET_ACTION = "#ComputerSystem.Reset"
ALLOWED_RESETS = "ResetType@Redfish.AllowableValues"
ALLOWED_BOOT_TARGETS = "BootSourceOverrideTarget@Redfish.AllowableValues"
TASK_WAIT_S = 5.0  # how long a 202's task monitor is followed before trusting the read-back
TASK_POLL_S = 0.5

POWER_STATES: dict[str, PowerState] = {"On": PowerState.ON, "Off": PowerState.OFF}
RESET_TYPES: dict[Action, str] = {
    Action.ON: "On",
    Action.OFF: "ForceOff",
    Action.SOFT_OFF: "GracefulShutdown",
    Action.RESET: "ForceRestart",
    Action.CYCLE: "PowerCycle",
}
BOOT_TARGETS: dict[BootDevice, str] = {
    BootDevice.PXE: "Pxe",
    BootDevice.DISK: "Hdd",
    BootDevice.CDROM: "Cd",
    BootDevice.BIOS: "BiosSetup",
}
_BOOT_DEVICES = {name: device for device, name in BOOT_TARGETS.items()}
_FAILED_TASK_STATES = frozenset({"Exception", "Killed", "Cancelled", "Interrupted"})


class _NoDownloads:
    """sushy's "public connector" (message registries from the Internet): refused.
    A power service talks to BMCs only."""

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise requests.ConnectionError("powerq never downloads Redfish registries")


@dataclass
class RedfishSession:
    """A logged-in sushy client and the system it acts on."""

    root: Any  # sushy.Sushy (untyped)
    auth: Any  # sushy.auth.SessionOrBasicAuth
    conn: OnceConnector
    system_path: str


def connect(target: BmcTarget, *, scheme: str = "https") -> RedfishSession:
    """Log in to ``target`` (session, or HTTP Basic if the BMC has no sessions) and
    settle which system it acts on.

    :raises BmcUnreachable: cannot connect or no answer in time (nothing is cached).
    :raises BmcAuthError: the BMC refused the credentials.
    :raises BmcProtocolError: TLS failed, or the system cannot be chosen (none, or
        several and the node names none).
    """
    label = f"[{target.address}]" if ":" in target.address else target.address
    base_url = f"{scheme}://{label}:{target.port}"
    try:
        verify = redfish_tls.verify_argument(target)
    except OSError as exc:
        raise BmcProtocolError(
            f"Redfish at {target.label}: cannot write the node's CA bundle to a file: {exc}",
            address=target.address,
            port=target.port,
        ) from exc
    conn = OnceConnector(base_url, verify=verify)
    auth = sushy_auth.SessionOrBasicAuth(username=target.username, password=target.password)
    try:
        root = sushy.Sushy(base_url, auth=auth, connector=conn, public_connector=_NoDownloads())
        system_path = target.system or _single_system(root, conn, target)
    except SoftTimeLimitExceeded:
        conn.close()
        raise
    except Exception as exc:
        conn.close()
        raise redfish_errors.from_exception(exc, target, "login", sent=False) from exc
    return RedfishSession(root=root, auth=auth, conn=conn, system_path=system_path)


def _single_system(root: Any, conn: OnceConnector, target: BmcTarget) -> str:
    """The path of the one member of /redfish/v1/Systems.

    :raises BmcProtocolError: no member, or several (named, with what to set).
    """
    collection = root._systems_path or SYSTEMS_PREFIX.rstrip("/")
    members = conn.get(collection).json().get("Members") or []
    paths = [str(m.get("@odata.id")) for m in members if isinstance(m, dict)]
    if len(paths) == 1:
        return paths[0]
    if not paths:
        raise BmcProtocolError(
            f"Redfish at {target.label}: {collection} lists no system",
            address=target.address,
            port=target.port,
        )
    raise BmcProtocolError(
        f"Redfish at {target.label}: {collection} lists {len(paths)} systems "
        f"({', '.join(paths)}); set the node's system option to the one this node is",
        address=target.address,
        port=target.port,
    )


def disconnect(session: RedfishSession) -> None:
    """Log out (DELETE the Redfish session, if one was made); never raises."""
    try:
        session.auth.close()
    except Exception:  # best effort: the session is being thrown away anyway
        _log.debug("Redfish logout failed", exc_info=True)
    finally:
        session.root._auth = None  # nothing left for sushy's __del__ to close
        session.conn.close()


SESSIONS: SessionCache[RedfishSession] = SessionCache(connect, disconnect)


def http_sessions() -> SessionCache[RedfishSession]:
    """A session cache speaking plain HTTP: for emulators in tests, never for BMCs."""
    return SessionCache(functools.partial(connect, scheme="http"), disconnect)


class RedfishDriver(PowerDriver):
    """One BMC's system over Redfish; cheap to create, the session lives in :data:`SESSIONS`."""

    def __init__(
        self, target: BmcTarget, sessions: SessionCache[RedfishSession] = SESSIONS
    ) -> None:
        self.target = target
        self._sessions = sessions

    def __repr__(self) -> str:
        return f"RedfishDriver({self.target.label}, user={self.target.username!r})"

    def get_power_state(self) -> PowerState:
        """Read the system's ``PowerState``: On/Off, anything else UNKNOWN.

        :raises BmcUnreachable: cannot connect or no answer in time (transient).
        :raises BmcAuthError: credentials refused (permanent).
        :raises BmcProtocolError: TLS failed, no such system, or an unusable answer.
        """
        with self._sessions.lease(self.target) as lease:
            system = self._system(lease, "power state read")
        return POWER_STATES.get(str(system.get("PowerState")), PowerState.UNKNOWN)

    def send_power_action(self, action: Action) -> None:
        """POST ``ComputerSystem.Reset`` once, with the ResetType for ``action``.

        The ResetType must be among those the system offers
        (``ResetType@Redfish.AllowableValues``, or its ``@Redfish.ActionInfo``).
        A 202 with a task monitor is followed for up to :data:`TASK_WAIT_S`.

        :raises BmcAckUnknown: the POST went out and no answer came (or a 5xx).
        :raises BmcUnreachable: nothing was sent (cannot connect, session lost).
        :raises BmcAuthError: credentials refused (permanent).
        :raises BmcCommandRejected: the ResetType is not offered, or the BMC refused it.
        :raises ValueError: ``action`` is ``query`` or otherwise not sendable.
        """
        if action not in RESET_TYPES:
            raise ValueError(f"{action!r} is not a power action a BMC can be sent")
        reset_type = RESET_TYPES[action]
        what = f"reset {reset_type!r}"
        with self._sessions.lease(self.target) as lease:
            system = self._system(lease, what)
            target_uri, allowed = self._reset_action(lease, system, what)
            if reset_type not in allowed:
                offered = ", ".join(allowed) or "none"
                raise self._rejected(
                    what, f"this system offers ResetType {offered}, not {reset_type}"
                )
            response = self._post_once(lease, target_uri, {"ResetType": reset_type}, what)
            if response.status_code == 202:
                self._follow_task(lease, response, what)

    def set_boot_device(self, device: BootDevice, *, persistent: bool) -> None:
        """PATCH ``Boot.BootSourceOverrideTarget`` and ``BootSourceOverrideEnabled``
        (Continuous when ``persistent``, else Once). Safe to repeat.

        :raises BmcUnreachable: cannot connect or no answer in time (transient).
        :raises BmcAuthError: credentials refused (permanent).
        :raises BmcCommandRejected: the device is not offered, or the BMC refused it.
        :raises BmcProtocolError: TLS failed, no such system, or an unusable answer.
        """
        name = BOOT_TARGETS[device]
        what = f"boot device {name!r}"
        with self._sessions.lease(self.target) as lease:
            boot = self._system(lease, what).get("Boot") or {}
            allowed = boot.get(ALLOWED_BOOT_TARGETS)
            if isinstance(allowed, list) and name not in allowed:
                offered = ", ".join(str(v) for v in allowed) or "none"
                raise self._rejected(what, f"this system offers boot targets {offered}")
            body = {
                "Boot": {
                    "BootSourceOverrideTarget": name,
                    "BootSourceOverrideEnabled": "Continuous" if persistent else "Once",
                }
            }
            self._call(
                lease, what, lambda: lease.session.conn.patch(lease.session.system_path, data=body)
            )

    def get_boot_device(self) -> BootDevice | None:
        """The ``Boot.BootSourceOverrideTarget`` in effect, or None (override
        disabled, not reported, or a target powerq does not name).

        :raises BmcUnreachable: cannot connect or no answer in time (transient).
        :raises BmcAuthError: credentials refused (permanent).
        """
        with self._sessions.lease(self.target) as lease:
            boot = self._system(lease, "boot device read").get("Boot") or {}
        if boot.get("BootSourceOverrideEnabled") == "Disabled":
            return None
        return _BOOT_DEVICES.get(str(boot.get("BootSourceOverrideTarget")))

    def close(self) -> None:
        """Log out of this BMC's shared session (other drivers for it log in again)."""
        self._sessions.close(self.target)

    # --- helpers: each call runs under the BMC's lease -----------------------------

    def _system(self, lease: Lease[RedfishSession], what: str) -> dict[str, Any]:
        """GET the system resource (through sushy: re-login on 401, bounded)."""
        path = lease.session.system_path
        try:
            return self._json(lease, what, path)
        except BmcProtocolError as exc:
            if "HTTP 404" in str(exc):
                raise BmcProtocolError(
                    f"Redfish at {self.target.label}: no such system {path!r}; set the "
                    f"node's system option to a member of {SYSTEMS_PREFIX.rstrip('/')} "
                    "(or leave it unset when there is exactly one)",
                    address=self.target.address,
                    port=self.target.port,
                ) from exc
            raise

    def _json(self, lease: Lease[RedfishSession], what: str, path: str) -> dict[str, Any]:
        response = self._call(lease, what, lambda: lease.session.conn.get(path))
        try:
            document = response.json()
        except ValueError as exc:
            raise redfish_errors.from_exception(exc, self.target, what, sent=False) from exc
        if not isinstance(document, dict):
            raise BmcProtocolError(
                f"Redfish {what} at {self.target.label}: {path} is not a JSON object",
                address=self.target.address,
                port=self.target.port,
            )
        return document

    def _call(self, lease: Lease[RedfishSession], what: str, call: Any) -> Any:
        """Run one sushy request; map its failure (and drop a session that failed)."""
        try:
            return call()
        except SoftTimeLimitExceeded:
            raise  # the step's time limit: the executor treats it as transient
        except Exception as exc:
            error = redfish_errors.from_exception(exc, self.target, what, sent=False)
            if not isinstance(error, BmcCommandRejected | BmcProtocolError):
                lease.invalidate()  # unreachable or refused: log in afresh next time
            raise error from exc

    def _reset_action(
        self, lease: Lease[RedfishSession], system: dict[str, Any], what: str
    ) -> tuple[str, list[str]]:
        """The Reset action's target and the ResetTypes it offers (inline or ActionInfo).

        :raises BmcCommandRejected: the system has no Reset action.
        """
        action = (system.get("Actions") or {}).get(RESET_ACTION)
        if not isinstance(action, dict) or not action.get("target"):
            raise self._rejected(what, "this system has no ComputerSystem.Reset action")
        allowed = action.get(ALLOWED_RESETS)
        info_path = action.get("@Redfish.ActionInfo")
        if allowed is None and info_path:
            info = self._json(lease, what, str(info_path))
            for parameter in info.get("Parameters") or []:
                if isinstance(parameter, dict) and parameter.get("Name") == "ResetType":
                    allowed = parameter.get("AllowableValues")
        if allowed is None:
            # Nothing advertised: sushy assumes every standard type; so do we,
            # except PowerCycle, which must be offered.
            allowed = [v for k, v in RESET_TYPES.items() if k is not Action.CYCLE]
        return str(action["target"]), [str(v) for v in allowed]

    def _post_once(
        self, lease: Lease[RedfishSession], path: str, body: dict[str, Any], what: str
    ) -> requests.Response:
        """Send the power POST exactly once and map its answer.

        :raises BmcAckUnknown: it went out unanswered, or the BMC answered 5xx.
        :raises BmcUnreachable: nothing was sent, or the session was refused (401:
            nothing ran; the next call logs in again).
        :raises BmcError: any other refusal, mapped.
        """
        try:
            response = lease.session.conn.post_once(path, body)
        except requests.RequestException as exc:
            lease.invalidate()
            raise redfish_errors.from_transport(exc, self.target, what, sent=True) from exc
        if response.status_code in ACCEPTED_STATUSES:
            return response
        if response.status_code < 400:  # a redirect or other non-answer: it did not run
            raise BmcCommandRejected(
                f"Redfish {what} at {self.target.label}: the BMC answered HTTP "
                f"{response.status_code} instead of accepting the command; nothing ran",
                address=self.target.address,
                port=self.target.port,
            )
        try:
            sushy_exc.raise_for_response("POST", path, response)
        except sushy_exc.HTTPError as exc:
            if exc.status_code == 401:
                lease.invalidate()
                raise BmcUnreachable(
                    f"Redfish {what} at {self.target.label}: the BMC refused the session "
                    "(HTTP 401) before running the command; nothing ran, and the next "
                    "call logs in again",
                    address=self.target.address,
                    port=self.target.port,
                ) from exc
            raise redfish_errors.from_http(exc, self.target, what, sent=True) from exc
        return response  # not reached: raise_for_response raises for >= 400

    def _follow_task(
        self, lease: Lease[RedfishSession], accepted: requests.Response, what: str
    ) -> None:
        """Follow a 202's task monitor for up to :data:`TASK_WAIT_S`.

        Still running then, or the monitor unreadable: the command was accepted,
        and the executor's read-back settles the rest.

        :raises BmcCommandRejected: the task reported that it failed.
        """
        monitor = accepted.headers.get("Location")
        if not monitor:
            return
        deadline = time.monotonic() + TASK_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(TASK_POLL_S)
            try:
                response = lease.session.conn.get(monitor)
            except SoftTimeLimitExceeded:
                raise
            except Exception:  # accepted all the same; the executor's read-back decides
                _log.debug("task monitor %s unreadable", monitor, exc_info=True)
                return
            if response.status_code != 202:
                self._check_task(response, what)
                return

    def _check_task(self, response: requests.Response, what: str) -> None:
        try:
            task = response.json()
        except ValueError:
            return
        if isinstance(task, dict) and task.get("TaskState") in _FAILED_TASK_STATES:
            messages = [
                str(m.get("Message")) for m in task.get("Messages") or [] if isinstance(m, dict)
            ]
            raise self._rejected(
                what, f"task {task.get('TaskState')}: {'; '.join(messages) or 'no message'}"
            )

    def _rejected(self, what: str, detail: str) -> BmcError:
        return BmcCommandRejected(
            f"Redfish {what} at {self.target.label}: {detail}",
            address=self.target.address,
            port=self.target.port,
        )
