"""A fleet of simulated BMCs in one event loop, one UDP port each, and its manifest."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from powerq.bmc.simfleet.endpoint import BmcSpec, SimBmc
from powerq.bmc.simfleet.machine import Behaviour
from powerq.bmc.simfleet.member import FleetMember
from powerq.bmc.simfleet.redfishendpoint import RedfishSite
from powerq.bmc.simfleet.redfishendpoint import listen as listen_redfish

MAX_PORT = 65535
_UNLIMITED_CAP = 1 << 20  # soft limit used when the hard limit is "unlimited"
PROTOCOLS = ("ipmi", "redfish")


@dataclass(frozen=True)
class FleetConfig:
    """How many BMCs, where, with which credentials and delays."""

    count: int
    base_port: int
    address: str = "127.0.0.1"
    transition: float = 2.0
    soft_delay: float | None = 5.0
    username: str = "admin"
    password: str = "password"
    protocol: str = "ipmi"  # or "redfish": one TCP port per BMC instead of UDP
    tls: bool = True  # redfish only: HTTPS with a self-signed certificate (False: HTTP)

    def __repr__(self) -> str:
        return (
            f"FleetConfig(count={self.count}, base_port={self.base_port}, "
            f"address={self.address!r}, transition={self.transition}, "
            f"soft_delay={self.soft_delay}, username={self.username!r}, "
            f"protocol={self.protocol!r}, tls={self.tls})"
        )

    def specs(self) -> list[BmcSpec]:
        """One spec per BMC: ``sim-0001`` on ``base_port``, and so on.

        :raises ValueError: count < 1, the port range leaves 1..65535, or an unknown protocol.
        """
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}"
            )
        if self.count < 1 or self.base_port < 1 or self.base_port + self.count - 1 > MAX_PORT:
            raise ValueError(f"{self.count} ports from {self.base_port} do not fit in 1..65535")
        width = max(4, len(str(self.count)))
        return [
            BmcSpec(
                f"sim-{i + 1:0{width}d}",
                self.address,
                self.base_port + i,
                self.username,
                self.password,
            )
            for i in range(self.count)
        ]


class Fleet:
    """The running BMCs, by name."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.bmcs: dict[str, FleetMember] = {}

    async def start(self) -> None:
        """Bind every BMC's port (UDP for IPMI, TCP for Redfish).

        :raises OSError: a port is taken or the process ran out of file descriptors
            (the BMCs already bound are closed again).
        :raises ValueError: bad configuration (see :meth:`FleetConfig.specs`).
        """
        loop = asyncio.get_running_loop()
        specs = self.config.specs()
        try:
            if self.config.protocol == "redfish":
                site = redfish_site(self.config)
                for spec in specs:
                    self.bmcs[spec.name] = await listen_redfish(loop, spec, self._behaviour(), site)
            else:
                for spec in specs:
                    self.bmcs[spec.name] = await _listen(loop, spec, self._behaviour())
        except OSError:
            self.close()
            raise

    def get(self, name: str) -> FleetMember:
        """The BMC called ``name``.

        :raises KeyError: no such BMC.
        """
        return self.bmcs[name]

    def manifest(self) -> list[dict[str, Any]]:
        """The manifest records of every BMC, in port order."""
        return [bmc.manifest_entry() for bmc in self.bmcs.values()]

    def close(self) -> None:
        """Stop every BMC."""
        for bmc in self.bmcs.values():
            bmc.close()
        self.bmcs.clear()

    def _behaviour(self) -> Behaviour:
        return Behaviour(self.config.transition, self.config.soft_delay)


async def _listen(loop: asyncio.AbstractEventLoop, spec: BmcSpec, behaviour: Behaviour) -> SimBmc:
    bmc = SimBmc(spec, loop, behaviour)
    await loop.create_datagram_endpoint(lambda: bmc, local_addr=(spec.address, spec.port))
    return bmc


def redfish_site(config: FleetConfig) -> RedfishSite:
    """The scheme, TLS context and CA certificate every Redfish BMC of the fleet shares.

    :raises ValueError: ``config.address`` is not an IP address.
    """
    if not config.tls:
        return RedfishSite("http")
    from powerq.bmc.simfleet import tlscert

    cert_pem, key_pem = tlscert.self_signed(config.address)
    return RedfishSite("https", tlscert.server_context(cert_pem, key_pem), cert_pem)


def write_manifest(path: Path, records: list[dict[str, Any]] | dict[str, Any]) -> None:
    """Write the manifest atomically (temp file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(records, handle, indent=1)
    os.replace(tmp, path)


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force.

    :raises OSError: ``needed`` descriptors exceed the hard limit (says which limit).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_CAP if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if needed > soft:
        raise OSError(f"{needed} file descriptors needed but RLIMIT_NOFILE hard limit is {hard}")
    return soft
