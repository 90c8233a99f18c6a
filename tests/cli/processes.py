"""Helpers for tests that run powerq as real processes: waiting for HTTP, finding leftovers."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    """GET ``url``; (status, body), or (0, b"") when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


def wait_until(ready: Callable[[], Any], what: str, timeout: float, alive: Callable[[], bool],
               log: Path | None = None) -> Any:  # fmt: skip
    """Poll ``ready()`` until it returns something truthy; return it.

    :raises AssertionError: the process died (``alive()`` false) or time ran out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if not alive():
            break
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what} did not happen in {timeout:.0f}s\n{tail}")


def referencing(marker: str) -> list[tuple[int, str]]:
    """Processes whose command line or environment mentions ``marker``."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            environ = process.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if marker in cmdline or any(marker in value for value in environ.values()):
            found.append((process.pid, cmdline[:200]))
    return found


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` that have not exited (zombies count as exited)."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive
