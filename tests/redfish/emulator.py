"""sushy-tools' Redfish emulator (``sushy-emulator``, fake driver) as a test subprocess.

A Redfish BMC powerq's authors did not write: started on 127.0.0.1 and a free
port with HTTP Basic credentials (bcrypt htpasswd, as the emulator requires),
optionally over TLS with a self-signed certificate made here with
``cryptography``; stopped (terminate, then kill) when the ``with`` block ends.
Its request log (werkzeug's, one line per request answered) counts what
reached it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import bcrypt
import requests

from powerq.bmc.simfleet import tlscert

USERNAME = "admin"
PASSWORD = "redfish-pw"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    """A TCP port nothing listens on right now (127.0.0.1)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def self_signed(directory: Path) -> tuple[Path, Path, str]:
    """A certificate for 127.0.0.1 (its own CA) and its key; returns (cert, key, PEM)."""
    pem, key_pem = tlscert.self_signed("127.0.0.1")
    cert_path, key_path = directory / "bmc.crt", directory / "bmc.key"
    cert_path.write_text(pem)
    key_path.write_text(key_pem)
    return cert_path, key_path, pem


@dataclass
class Emulator:
    """A running ``sushy-emulator``; use as a context manager."""

    directory: Path
    systems: tuple[str, ...] = ("node-a",)
    tls: bool = False
    port: int = field(default_factory=free_port)
    ca_pem: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "emulator.log"

    def __enter__(self) -> Emulator:
        self.directory.mkdir(parents=True, exist_ok=True)
        htpasswd = self.directory / "htpasswd"
        digest = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"{USERNAME}:{digest}\n")
        fake = [
            {
                "uuid": f"00000000-0000-4000-8000-{i:012d}",
                "name": name,
                "power_state": "Off",
                "nics": [],
            }
            for i, name in enumerate(self.systems, start=1)
        ]
        config = self.directory / "emulator.conf"
        lines = [
            "SUSHY_EMULATOR_FAKE_DRIVER = True",
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {fake!r}",
            f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}",
            f"SUSHY_EMULATOR_STATE_DIR = {str(self.directory / 'state')!r}",
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}",
        ]
        if self.tls:
            cert, key, self.ca_pem = self_signed(self.directory)
            lines += [
                f"SUSHY_EMULATOR_SSL_CERT = {str(cert)!r}",
                f"SUSHY_EMULATOR_SSL_KEY = {str(key)!r}",
            ]
        config.write_text("\n".join(lines) + "\n")
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.redfish.emulator_main", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        self._wait_ready()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Terminate the emulator (kill it if it lingers)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"sushy-emulator exited: {self.log_path.read_text()[-2000:]}")
            try:
                requests.get(f"{self.url}/redfish/v1/", timeout=1, verify=self._verify())
                return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sushy-emulator did not answer in {START_TIMEOUT_S} s")

    # --- an independent client: plain requests, never sushy ---------------------

    def get(self, path: str) -> dict[str, object]:
        """GET ``path`` as a plain HTTP client would."""
        response = requests.get(
            f"{self.url}{path}", auth=(USERNAME, PASSWORD), timeout=5, verify=self._verify()
        )
        response.raise_for_status()
        document: dict[str, object] = response.json()
        return document

    def system_path(self, name: str) -> str:
        """The @odata.id of the fake system called ``name``."""
        collection = self.get("/redfish/v1/Systems")
        for member in collection["Members"]:  # type: ignore[attr-defined]
            path = str(member["@odata.id"])
            if self.get(path).get("Name") == name:
                return path
        raise KeyError(name)

    def power_state(self, path: str) -> str:
        return str(self.get(path)["PowerState"])

    def wait_power(self, path: str, state: str, timeout_s: float = 10.0) -> str:
        """Poll PowerState until it is ``state`` (or the time is up); return the last."""
        deadline = time.monotonic() + timeout_s
        seen = self.power_state(path)
        while seen != state and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = self.power_state(path)
        return seen

    def posts(self, path_fragment: str) -> int:
        """POST requests to a path containing ``path_fragment`` the emulator answered."""
        pattern = re.compile(rf"POST \S*{re.escape(path_fragment)}\S* HTTP")
        return len(pattern.findall(self.log_path.read_text(errors="replace")))

    def _verify(self) -> bool | str:
        return str(self.directory / "bmc.crt") if self.tls else True
