"""The BMC layer: one small driver interface and its implementations.

Use :func:`driver_for` to get the driver of a node's BMC, and :func:`close_all`
when a worker shuts down. Importing this package has no side effects (pyghmi
is only loaded and patched when the first IPMI driver is asked for).
"""

from __future__ import annotations

from powerq.bmc.base import (
    BmcAckUnknown,
    BmcAuthError,
    BmcCommandRejected,
    BmcError,
    BmcProtocolError,
    BmcTarget,
    BmcUnreachable,
    PowerDriver,
)
from powerq.states import DriverKind

__all__ = [
    "BmcAckUnknown",
    "BmcAuthError",
    "BmcCommandRejected",
    "BmcError",
    "BmcProtocolError",
    "BmcTarget",
    "BmcUnreachable",
    "PowerDriver",
    "close_all",
    "driver_for",
    "load_drivers",
]

_MODULES = {DriverKind.IPMI: "powerq.bmc.ipmi", DriverKind.REDFISH: "powerq.bmc.redfish"}


def driver_for(target: BmcTarget) -> PowerDriver:
    """The driver for ``target``: IPMI and Redfish (shared session caches), sim
    (in-process registry).

    :raises ValueError: an unknown driver name.
    """
    kind = DriverKind(target.driver)
    if kind is DriverKind.IPMI:
        from powerq.bmc.ipmi import IpmiDriver

        return IpmiDriver(target)
    if kind is DriverKind.REDFISH:
        from powerq.bmc.redfish import RedfishDriver

        return RedfishDriver(target)
    if kind is DriverKind.SIM:
        from powerq.bmc.sim import REGISTRY

        return REGISTRY.get(target)
    raise ValueError(f"unknown driver {kind.value!r} (BMC {target.label})")


def load_drivers(kinds: tuple[DriverKind, ...]) -> None:
    """Import (and for IPMI, patch) the driver modules of ``kinds`` now.

    A lane worker calls this when it is ready, so the first request it runs
    does not pay pyghmi's or sushy's import (0.15-0.2 s of CPU each).

    :raises ImportError: a driver's library is not installed.
    """
    import importlib

    for kind in kinds:
        module = _MODULES.get(kind)
        if module is not None:
            importlib.import_module(module)


def close_all() -> None:
    """Log out of every IPMI and Redfish session this process holds (no-op for a
    protocol never used)."""
    import sys

    for module in ("powerq.bmc.ipmi", "powerq.bmc.redfish"):
        loaded = sys.modules.get(module)
        if loaded is not None:
            loaded.SESSIONS.close_all()
