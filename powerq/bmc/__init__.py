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
]


def driver_for(target: BmcTarget) -> PowerDriver:
    """The driver for ``target``: IPMI (shared session cache), sim (in-process registry).

    :raises NotImplementedError: ``redfish`` (not built yet).
    :raises ValueError: an unknown driver name.
    """
    kind = DriverKind(target.driver)
    if kind is DriverKind.IPMI:
        from powerq.bmc.ipmi import IpmiDriver

        return IpmiDriver(target)
    if kind is DriverKind.SIM:
        from powerq.bmc.sim import REGISTRY

        return REGISTRY.get(target)
    raise NotImplementedError(
        f"the {kind.value} driver is not implemented yet (BMC {target.label}); "
        "use driver 'ipmi' for this node, or 'sim' in tests"
    )


def close_all() -> None:
    """Log out of every IPMI session this process holds (no-op if IPMI was never used)."""
    import sys

    ipmi = sys.modules.get("powerq.bmc.ipmi")
    if ipmi is not None:
        ipmi.SESSIONS.close_all()
