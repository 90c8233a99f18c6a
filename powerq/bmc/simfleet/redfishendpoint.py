"""One simulated Redfish BMC on its own loopback TCP port (HTTPS or HTTP), asyncio streams.

Transport-level faults are applied here; everything the BMC *says* comes from
its :class:`~.redfishresponder.RedfishResponder`:

* ``down``: the BMC stops listening (connections are refused; open ones are
  aborted) until the fault is cleared;
* ``lossy`` (fraction): each request is dropped with that probability: the
  connection is aborted without an answer and nothing runs;
* ``slow`` (delay): each answer is written ``delay`` seconds late (what it
  does, it does at once, as a BMC whose answer is stuck in a queue).

``executes_retransmissions`` and ``suite3_only_accepts_any`` are IPMI-only and
refused by the control API for these BMCs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any

from powerq.bmc.simfleet.cmdlog import CommandLog
from powerq.bmc.simfleet.endpoint import BmcSpec, LoopScheduler
from powerq.bmc.simfleet.faults import FaultKind, Faults
from powerq.bmc.simfleet.http11 import HttpError, Request, Response, read_request
from powerq.bmc.simfleet.httpsessions import TokenTable
from powerq.bmc.simfleet.machine import Behaviour, Machine
from powerq.bmc.simfleet.redfishdocs import SYSTEMS
from powerq.bmc.simfleet.redfishresponder import Credentials, RedfishResponder
from powerq.bmc.simfleet.shared import SharedState

_log = logging.getLogger(__name__)
IDLE_CONNECTION_S = 30.0  # a kept-alive connection with no request for this long is closed
BACKLOG = 128
IPMI_ONLY_FAULTS = frozenset(
    {FaultKind.EXECUTES_RETRANSMISSIONS.value, FaultKind.SUITE3_ONLY_ACCEPTS_ANY.value}
)


@dataclass(frozen=True)
class RedfishSite:
    """What every BMC of a Redfish fleet shares: the scheme and, for HTTPS, the TLS
    context and the CA certificate clients verify it with."""

    scheme: str = "https"
    context: ssl.SSLContext | None = field(default=None, repr=False)
    ca_pem: str | None = field(default=None, repr=False)


class RedfishBmc(SharedState):
    """A Redfish BMC: listener, machine, faults, sessions, log and request counters."""

    unsupported_faults = IPMI_ONLY_FAULTS

    def __init__(
        self,
        spec: BmcSpec,
        loop: asyncio.AbstractEventLoop,
        behaviour: Behaviour,
        site: RedfishSite,
    ) -> None:
        self.spec = spec
        self.site = site
        self.log = CommandLog()
        self.faults = Faults()
        self.machine = Machine(LoopScheduler(loop), self.log, behaviour)
        self.sessions = TokenTable()
        self.responder = RedfishResponder(
            Credentials(spec.username, spec.password),
            spec.name,
            str(uuid.uuid4()),
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
        self._server: asyncio.Server | None = None
        self._starting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def system_path(self) -> str:
        """The path of this BMC's one ComputerSystem."""
        return f"{SYSTEMS}/{self.spec.name}"

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest record clients read to reach this BMC (driver ``redfish``)."""
        return {
            **self.spec.manifest_entry(),
            "driver": "redfish",
            "system": self.system_path,
            "scheme": self.site.scheme,
            "ca_bundle": self.site.ca_pem,
        }

    async def start(self) -> None:
        """Bind and listen.

        :raises OSError: the port is taken or no file descriptor is left.
        """
        await self._serve_on(self._bind())

    def faults_changed(self) -> None:
        """Stop listening when ``down`` was set; listen again once it is cleared.

        :raises OSError: the port was taken while the BMC was down.
        """
        if self.faults.down and self._listening:
            self._stop_listening()
        elif not self.faults.down and not self._listening:
            # Bound and listening now (connections queue); accepted once the task runs.
            self._starting = self._loop.create_task(self._serve_on(self._bind()))

    def status(self) -> dict[str, Any]:
        """The shared summary (its packet counters count HTTP requests here), with the
        protocol, the system path and whether it listens."""
        return {
            **super().status(),
            "protocol": "redfish",
            "system": self.system_path,
            "listening": self._listening,
        }

    def close(self) -> None:
        """Stop listening and abort every open connection."""
        self._stop_listening()

    # --- listening ------------------------------------------------------------------

    @property
    def _listening(self) -> bool:
        return self._server is not None or self._starting is not None

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.spec.address, self.spec.port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def _serve_on(self, sock: socket.socket) -> None:
        try:
            self._server = await asyncio.start_server(
                self._connection, sock=sock, ssl=self.site.context, backlog=BACKLOG
            )
        finally:
            self._starting = None

    def _stop_listening(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            self._starting = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()

    # --- one connection -------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, TimeoutError, ssl.SSLError, OSError):
            pass  # the client went away, or we aborted the connection
        finally:
            self._connections.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether to wait for another on this connection."""
        try:
            request = await asyncio.wait_for(read_request(reader), IDLE_CONNECTION_S)
        except HttpError as exc:
            await self._write(writer, Response(exc.status), keep_alive=False)
            return False
        if request is None:
            return False
        self.received += 1
        if self.faults.down or self.faults.drops(self._rng):
            self.dropped += 1
            writer.transport.abort()
            return False
        response = self._answer(request)
        if self.faults.slow_delay > 0:
            await asyncio.sleep(self.faults.slow_delay)
        await self._write(writer, response, keep_alive=request.keep_alive)
        return request.keep_alive

    def _answer(self, request: Request) -> Response:
        try:
            return self.responder.handle(request)
        except Exception:  # a bug in the sim must not look like a dead BMC
            _log.exception("simulated Redfish BMC %s failed on %s", self.spec.name, request.path)
            return Response(500)

    async def _write(
        self, writer: asyncio.StreamWriter, response: Response, *, keep_alive: bool
    ) -> None:
        if writer.transport.is_closing():
            return
        writer.write(response.render(keep_alive=keep_alive))
        with contextlib.suppress(ConnectionError):
            await writer.drain()


async def listen(
    loop: asyncio.AbstractEventLoop, spec: BmcSpec, behaviour: Behaviour, site: RedfishSite
) -> RedfishBmc:
    """A listening Redfish BMC for ``spec``.

    :raises OSError: its port is taken or no file descriptor is left.
    """
    bmc = RedfishBmc(spec, loop, behaviour, site)
    await bmc.start()
    return bmc
