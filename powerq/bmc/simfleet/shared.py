"""What both BMC personalities hold and report alike: the machine, its faults,
its command log, its sessions and its packet counters.

:class:`~.endpoint.SimBmc` (IPMI over UDP) and :class:`~.redfishendpoint.RedfishBmc`
(Redfish over HTTP) derive from :class:`SharedState`, so the control API's
status and counter reset are one piece of code for both.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from powerq.bmc import ipmi_boot

if TYPE_CHECKING:
    from powerq.bmc.simfleet.cmdlog import CommandLog
    from powerq.bmc.simfleet.endpoint import BmcSpec
    from powerq.bmc.simfleet.faults import Faults
    from powerq.bmc.simfleet.machine import Machine


class SessionCounts(Protocol):
    """What status needs of a personality's session table."""

    opened_total: int

    def expire(self, now: float) -> Any:
        """Forget sessions idle too long."""

    def count_active(self) -> int:
        """Sessions open now."""


class SharedState:
    """State every simulated BMC has, and how it is reported."""

    spec: BmcSpec
    log: CommandLog
    faults: Faults
    machine: Machine
    sessions: SessionCounts
    received: int
    dropped: int
    _loop: asyncio.AbstractEventLoop

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary: power, transition, faults, sessions, counters."""
        self.sessions.expire(self._loop.time())
        return {
            "name": self.spec.name,
            "address": self.spec.address,
            "port": self.spec.port,
            "power": "on" if self.machine.powered else "off",
            "transitioning": self.machine.transitioning,
            "behaviour": {
                "transition": self.machine.behaviour.transition,
                "soft_delay": self.machine.behaviour.soft_delay,
            },
            "faults": self.faults.active(),
            "boot": boot_status(self.machine.boot_flags),
            "sessions_active": self.sessions.count_active(),
            "sessions_opened": self.sessions.opened_total,
            "overlaps": self.machine.overlaps,
            "resets": self.machine.resets,
            "packets_received": self.received,
            "packets_dropped": self.dropped,
        }

    def reset_counters(self) -> None:
        """Forget the log, the overlap and reset counts and the session tally."""
        self.log.reset()
        self.machine.overlaps = self.machine.resets = 0
        self.sessions.opened_total = 0
        self.received = self.dropped = 0


def boot_status(flags: bytes) -> dict[str, Any]:
    """The boot override as a client set it: device (None: no override) and persistence."""
    device, persistent = ipmi_boot.parse_flags(flags)
    return {"device": device.value if device else None, "persistent": persistent}
