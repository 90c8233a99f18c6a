"""The JSON documents a simulated Redfish BMC serves (no state, no HTTP: plain builders).

Only what powerq's driver (sushy), the tests and curl read: the service root
with its ``Links.Sessions``, the session service and sessions, the systems
collection, one ComputerSystem with ``PowerState``, ``Boot`` and the
``ComputerSystem.Reset`` action, and Redfish error bodies with
``@Message.ExtendedInfo``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

ROOT = "/redfish/v1"
SESSION_SERVICE = f"{ROOT}/SessionService"
SESSIONS = f"{SESSION_SERVICE}/Sessions"
SYSTEMS = f"{ROOT}/Systems"
RESET_SUFFIX = "/Actions/ComputerSystem.Reset"
RESET_TYPES = ("On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle")
BOOT_TARGETS = ("None", "Pxe", "Hdd", "Cd", "BiosSetup")
BOOT_ENABLED = ("Disabled", "Once", "Continuous")


def service_root(uuid: str) -> dict[str, Any]:
    """``/redfish/v1/``: where the systems and the sessions are."""
    return {
        "@odata.id": f"{ROOT}/",
        "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
        "Id": "RootService",
        "Name": "powerq simulated BMC",
        "RedfishVersion": "1.6.0",
        "UUID": uuid,
        "Systems": {"@odata.id": SYSTEMS},
        "SessionService": {"@odata.id": SESSION_SERVICE},
        "Links": {"Sessions": {"@odata.id": SESSIONS}},
    }


def versions() -> dict[str, Any]:
    """``/redfish``: the protocol versions offered."""
    return {"v1": f"{ROOT}/"}


def session_service(timeout_s: float) -> dict[str, Any]:
    """``/redfish/v1/SessionService``."""
    return {
        "@odata.id": SESSION_SERVICE,
        "@odata.type": "#SessionService.v1_1_6.SessionService",
        "Id": "SessionService",
        "Name": "Session Service",
        "ServiceEnabled": True,
        "SessionTimeout": int(timeout_s),
        "Sessions": {"@odata.id": SESSIONS},
    }


def session(session_id: int, username: str) -> dict[str, Any]:
    """One session (never its token)."""
    return {
        "@odata.id": f"{SESSIONS}/{session_id}",
        "@odata.type": "#Session.v1_3_0.Session",
        "Id": str(session_id),
        "Name": "User Session",
        "UserName": username,
    }


def collection(path: str, kind: str, members: Iterable[str]) -> dict[str, Any]:
    """A resource collection listing ``members`` by path."""
    listed = [{"@odata.id": member} for member in members]
    return {
        "@odata.id": path,
        "@odata.type": f"#{kind}Collection.{kind}Collection",
        "Name": f"{kind} Collection",
        "Members": listed,
        "Members@odata.count": len(listed),
    }


def system(
    path: str, name: str, power_state: str, boot_target: str, boot_enabled: str
) -> dict[str, Any]:
    """One ComputerSystem: power state, boot override and the Reset action."""
    return {
        "@odata.id": path,
        "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
        "Id": name,
        "Name": name,
        "SystemType": "Physical",
        "Manufacturer": "powerq",
        "Model": "simulated",
        "PowerState": power_state,
        "Status": {"State": "Enabled", "Health": "OK"},
        "Boot": {
            "BootSourceOverrideTarget": boot_target,
            "BootSourceOverrideEnabled": boot_enabled,
            "BootSourceOverrideTarget@Redfish.AllowableValues": list(BOOT_TARGETS),
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": path + RESET_SUFFIX,
                "ResetType@Redfish.AllowableValues": list(RESET_TYPES),
            }
        },
    }


def error(message_id: str, message: str) -> dict[str, Any]:
    """A Redfish error body; ``message`` is what clients show (sushy reads ExtendedInfo)."""
    return {
        "error": {
            "code": f"Base.1.8.{message_id}",
            "message": message,
            "@Message.ExtendedInfo": [
                {
                    "@odata.type": "#Message.v1_1_1.Message",
                    "MessageId": f"Base.1.8.{message_id}",
                    "Message": message,
                    "Severity": "Warning",
                }
            ],
        }
    }
