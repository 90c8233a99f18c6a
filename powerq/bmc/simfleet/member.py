"""What the fleet and its control API need of a simulated BMC, whichever protocol it speaks.

Both personalities (:class:`~.endpoint.SimBmc`, IPMI over UDP, and
:class:`~.redfishendpoint.RedfishBmc`, Redfish over HTTP(S)) hold the same
:class:`~.machine.Machine`, :class:`~.faults.Faults` and
:class:`~.cmdlog.CommandLog`, so the control API steers and reads them alike.
"""

from __future__ import annotations

from typing import Any, Protocol

from powerq.bmc.simfleet.cmdlog import CommandLog
from powerq.bmc.simfleet.endpoint import BmcSpec
from powerq.bmc.simfleet.faults import Faults
from powerq.bmc.simfleet.machine import Machine


class FleetMember(Protocol):
    """One simulated BMC as the fleet sees it."""

    spec: BmcSpec
    log: CommandLog
    faults: Faults
    machine: Machine
    unsupported_faults: frozenset[str]

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest record clients read to reach this BMC."""
        ...

    def faults_changed(self) -> None:
        """Apply a change of :attr:`faults` that the transport must act on (e.g. down)."""
        ...

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary (see the README's control API)."""
        ...

    def reset_counters(self) -> None:
        """Forget the log and the counters."""
        ...

    def close(self) -> None:
        """Stop serving."""
        ...
