"""Start a simulated fleet in a subprocess for tests and benchmarks, and stop it again.

::

    with SimFleetProcess(count=10, transition=0.5) as fleet:
        target = fleet.targets()[0]
        fleet.control.set_fault(fleet.manifest[0]["name"], "slow", delay=1.0)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from powerq.bmc.base import BmcTarget
from powerq.bmc.simfleet.controlclient import ControlClient
from powerq.bmc.simfleet.ports import free_tcp_port, free_tcp_range, free_udp_range

_POLL_S = 0.05
_START_ATTEMPTS = 3


class FleetStartError(RuntimeError):
    """The fleet process exited or never wrote its manifest."""


class SimFleetProcess:
    """``python -m powerq.bmc.simfleet`` as a context manager.

    Ports are chosen free when not given (and a fresh range is tried if the
    fleet could not bind). ``soft_delay=None`` makes soft shutdown never happen.
    ``protocol="redfish"`` serves Redfish over HTTPS (``tls=False``: HTTP), one
    TCP port and one system per BMC.
    """

    def __init__(
        self,
        count: int,
        base_port: int | None = None,
        *,
        transition: float = 2.0,
        soft_delay: float | None = 5.0,
        address: str = "127.0.0.1",
        control_port: int | None = None,
        start_timeout: float | None = None,
        workdir: Path | None = None,
        protocol: str = "ipmi",
        tls: bool = True,
    ) -> None:
        self.count = count
        self.protocol = protocol
        self.tls = tls
        self.address = address
        self.transition = transition
        self.soft_delay = soft_delay
        self._fixed_ports = (base_port, control_port)
        self.base_port = base_port or 0
        self.control_port = control_port or 0
        self.start_timeout = start_timeout or 30.0 + count / 100
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.workdir = workdir
        self.manifest: list[dict[str, Any]] = []
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def control(self) -> ControlClient:
        """Client for the running fleet's control API (always on 127.0.0.1)."""
        return ControlClient(self.control_port)

    def targets(self) -> list[BmcTarget]:
        """The manifest as driver targets, in port order (Redfish ones with their
        system path and the fleet's CA certificate)."""
        return [
            BmcTarget(
                r["driver"],
                r["address"],
                r["port"],
                r["username"],
                r["password"],
                system=r.get("system"),
                ca_bundle=r.get("ca_bundle"),
            )
            for r in self.manifest
        ]

    def __enter__(self) -> SimFleetProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the process and wait until every BMC listens.

        :raises FleetStartError: it failed every attempt (stderr is in the message).
        """
        workdir = self._workdir()
        error = ""
        for _ in range(_START_ATTEMPTS):
            self._choose_ports()
            error = self._try_start(workdir)
            if not error:
                return
            if all(self._fixed_ports):
                break
        raise FleetStartError(f"sim fleet of {self.count} did not start: {error}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process, SIGKILL it after ``timeout`` s, and clean up."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _workdir(self) -> Path:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="powerq-simfleet-")
            self.workdir = Path(self._tmp.name)
        return self.workdir

    def _choose_ports(self) -> None:
        base, control = self._fixed_ports
        free_range = free_tcp_range if self.protocol == "redfish" else free_udp_range
        self.base_port = base or free_range(self.count, self.address)
        self.control_port = control or free_tcp_port()

    def _try_start(self, workdir: Path) -> str:
        """Launch once; '' on success, else why it failed."""
        manifest = workdir / "fleet.json"
        manifest.unlink(missing_ok=True)
        stderr_path = workdir / "fleet.stderr"
        with stderr_path.open("wb") as stderr:
            self._proc = subprocess.Popen(  # we hold its stdin: if we die, it stops
                self._command(manifest),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        if self._wait_for(manifest):
            self.manifest = json.loads(manifest.read_text())
            return ""
        self._stop_process()
        return stderr_path.read_text(errors="replace").strip()[-2000:] or "timed out"

    def _stop_process(self) -> None:
        """Stop the process but keep the work directory (used between start attempts)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, 5.0)

    def _command(self, manifest: Path) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "powerq.bmc.simfleet",
            "--count",
            str(self.count),
            "--base-port",
            str(self.base_port),
            "--address",
            self.address,
            "--transition",
            str(self.transition),
            "--manifest",
            str(manifest),
            "--control-port",
            str(self.control_port),
            "--stop-on-stdin-eof",
            "--protocol",
            self.protocol,
        ]
        if not self.tls:
            command.append("--http")
        if self.soft_delay is None:
            return [*command, "--soft-never"]
        return [*command, "--soft-delay", str(self.soft_delay)]

    def _wait_for(self, manifest: Path) -> bool:
        deadline = time.monotonic() + self.start_timeout
        proc = self._proc
        assert proc is not None
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists():
                return True
            time.sleep(_POLL_S)
        return manifest.exists() and proc.poll() is None


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
