"""Harness: pyghmi's BMC server (``tests/bmc/pyghmi_bmc_server.py``) in its own process.

A BMC implementation powerq did not write. The process stops when the test
closes its stdin, or when the test process goes away (end of file too), or
after ``max_seconds``; every event it reports is read live from its stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from powerq.bmc.base import BmcTarget

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
POWER_EVENTS = frozenset({"power_off", "power_on", "power_cycle", "power_reset", "power_shutdown"})


class PyghmiBmcProcess:
    """One pyghmi BMC server on 127.0.0.1 and a free UDP port."""

    def __init__(
        self,
        *,
        user: str = "admin",
        password: str = "pyghmi-s3cret",
        kg: str | None = None,
        kg_hex: str | None = None,
        state: str = "off",
        delay: float = 0.0,
        max_seconds: float = 300.0,
    ) -> None:
        self.user, self.password = user, password
        self._argv = [
            sys.executable,
            "-m",
            "tests.bmc.pyghmi_bmc_server",
            "--user",
            user,
            "--password",
            password,
            "--state",
            state,
            "--delay",
            str(delay),
            "--max-seconds",
            str(max_seconds),
        ]
        if kg is not None:
            self._argv += ["--kg", kg]
        if kg_hex is not None:
            self._argv += ["--kg-hex", kg_hex]
        self.port = 0
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> PyghmiBmcProcess:
        self._process = subprocess.Popen(
            self._argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(START_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"pyghmi BMC server did not start: {self.stderr()}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Close its stdin (it exits at end of file); kill it if it lingers."""
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        self._stderr.close()

    def target(self, password: str | None = None, **options: Any) -> BmcTarget:
        """A powerq target for this BMC (``options``: cipher_suite, privilege, kg)."""
        return BmcTarget(
            "ipmi", "127.0.0.1", self.port, self.user, password or self.password, **options
        )

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Events reported so far (of one ``kind``, or all)."""
        with self._lock:
            return [dict(e) for e in self._events if kind is None or e["event"] == kind]

    def wait_events(self, kind: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The events of ``kind`` once ``count`` of them were reported (the server's
        output is read by a thread, so a BMC answer can come before its event).

        :raises AssertionError: fewer came within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while len(seen := self.events(kind)) < count:
            assert time.monotonic() < deadline, f"{len(seen)} {kind} event(s), wanted {count}"
            time.sleep(0.02)
        return seen

    def executions(self) -> list[dict[str, Any]]:
        """Power commands the BMC executed, in order, with their times."""
        with self._lock:
            return [dict(e) for e in self._events if e["event"] in POWER_EVENTS]

    def reset_events(self) -> None:
        with self._lock:
            self._events.clear()

    def settle(self, quiet_s: float = 0.3) -> None:
        """Wait until no event came for ``quiet_s`` (a late packet is counted too)."""
        deadline = time.monotonic() + 10.0
        seen = -1
        while time.monotonic() < deadline:
            count = len(self.events())
            if count == seen:
                return
            seen = count
            time.sleep(quiet_s)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "ready":
                self.port = int(event["port"])
                self._ready.set()
                continue
            with self._lock:
                self._events.append(event)
