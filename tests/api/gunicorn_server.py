"""A real gunicorn serving the API as the Procfile and ``powerq up`` run it (its
config, its worker class) on a free loopback port, for tests of what gunicorn
itself does before the application sees a request."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from powerq.services import free_tcp_port

START_TIMEOUT_S = 30.0


@contextlib.contextmanager
def running_gunicorn(
    *, workers: int = 1, threads: int = 2, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """gunicorn with :mod:`powerq.gunicorn_conf`; yield its (host, port), stop it after.

    :raises AssertionError: it exited or did not answer ``/healthz`` in time.
    """
    port = free_tcp_port()
    argv = [
        sys.executable, "-m", "gunicorn",
        "--config", "python:powerq.gunicorn_conf",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--threads", str(threads),
        "powerq.api.wsgi:app",
    ]  # fmt: skip
    process = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        _wait_healthy(port, process)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"gunicorn did not answer on port {port} in {START_TIMEOUT_S} s")
