"""One simulated BMC on its own UDP port: an asyncio datagram protocol.

Transport-level faults (down, lossy, slow) are applied here; everything the
BMC *says* comes from its :class:`~.responder.Responder`.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from powerq.bmc.simfleet.cmdlog import CommandLog
from powerq.bmc.simfleet.faults import Faults
from powerq.bmc.simfleet.handshake import Account
from powerq.bmc.simfleet.machine import Behaviour, Cancellable, Machine
from powerq.bmc.simfleet.responder import Responder
from powerq.bmc.simfleet.sessions import SessionTable
from powerq.bmc.simfleet.shared import SharedState


@dataclass(frozen=True)
class BmcSpec:
    """Name, address and credentials of one simulated BMC (the password is never shown)."""

    name: str
    address: str
    port: int
    username: str = "admin"
    password: str = field(default="password", repr=False)

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest record clients read to reach this BMC."""
        return {
            "name": self.name,
            "driver": "ipmi",
            "address": self.address,
            "port": self.port,
            "username": self.username,
            "password": self.password,
        }


class LoopScheduler:
    """Adapts an asyncio loop to the machine's ``Scheduler`` protocol."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:
        return self._loop.call_later(delay, callback)


class SimBmc(SharedState, asyncio.DatagramProtocol):
    """A BMC: protocol state, machine, faults, log and packet counters."""

    unsupported_faults: frozenset[str] = frozenset()  # every fault kind applies to IPMI

    def __init__(
        self, spec: BmcSpec, loop: asyncio.AbstractEventLoop, behaviour: Behaviour
    ) -> None:
        self.spec = spec
        self.log = CommandLog()
        self.faults = Faults()
        self.machine = Machine(LoopScheduler(loop), self.log, behaviour)
        self.sessions = SessionTable()
        account = Account(spec.username.encode(), spec.password.encode())
        self.responder = Responder(
            account,
            uuid.uuid4().bytes,
            self.machine,
            self.faults,
            self.sessions,
            self.log,
            loop.time,
        )
        self.received = 0
        self.dropped = 0
        self._loop = loop
        self._rng = random.Random()
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # 3.11's selector datagram transport does not subclass DatagramTransport
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received += 1
        if self.faults.drops(self._rng):
            self.dropped += 1
            return
        reply = self.responder.handle(data)
        if reply is not None:
            self._send(reply, addr)

    def _send(self, reply: bytes, addr: tuple[str | Any, int]) -> None:
        transport = self._transport
        if transport is None:
            return
        if self.faults.slow_delay > 0:
            self._loop.call_later(self.faults.slow_delay, transport.sendto, reply, addr)
        else:
            transport.sendto(reply, addr)

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest record clients read to reach this BMC."""
        return self.spec.manifest_entry()

    def faults_changed(self) -> None:
        """Nothing to do: every datagram reads the faults afresh."""

    def close(self) -> None:
        """Stop listening."""
        if self._transport is not None:
            self._transport.close()
