"""Helpers for the BMC-layer tests: hang guards, polling, the real ipmitool."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from powerq.bmc.base import BmcTarget
from powerq.bmc.simfleet.controlclient import ControlClient

FLEET_SIZE = 128
TRANSITION = 0.3  # seconds a power up/down takes in the shared fleet
SOFT_DELAY = 0.6
HANG_GUARD = 60.0  # generous: only catches hangs, never measures speed

_T = TypeVar("_T")


@dataclass(frozen=True)
class SimBmc:
    """One BMC of the shared fleet, handed to exactly one test."""

    name: str
    target: BmcTarget
    control: ControlClient


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``predicate`` every 50 ms until true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def within(fn: Callable[[], _T], timeout: float = HANG_GUARD) -> _T:
    """Run ``fn`` in a thread; fail the test if it has not returned after ``timeout`` s.

    Whatever ``fn`` raises is re-raised here.
    """
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"call still running after {timeout} s (hang)")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def ipmitool(
    target: BmcTarget, *args: str, cipher: str | None = None, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the system ``ipmitool -I lanplus`` against ``target`` (60 s hang guard)."""
    command = [
        "ipmitool",
        "-I",
        "lanplus",
        "-H",
        target.address,
        "-p",
        str(target.port),
        "-U",
        target.username,
        "-P",
        password or target.password,
    ]
    if cipher is not None:
        command += ["-C", cipher]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=HANG_GUARD, check=False
    )


requires_ipmitool = pytest.mark.skipif(
    shutil.which("ipmitool") is None, reason="the ipmitool binary is not installed"
)
