"""A throwaway Redis Sentinel group on loopback: one primary, one replica, three sentinels.

Every process is a ``redis-server`` (a sentinel is ``redis-server CONF --sentinel``)
on a free loopback port, keeping nothing on disk but the sentinels' own config
files (which they rewrite) in the test's temporary directory. Sentinels judge
the primary down after :data:`DOWN_AFTER_MS` and two of three must agree, so a
SIGKILLed primary is replaced within a few seconds.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import redis

from powerq.services import free_tcp_port
from tests.faults.services import ThrowawayRedis, redis_server_binary

MASTER_NAME = "powerq"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class ThrowawaySentinel:
    """One ``redis-server --sentinel`` on a free loopback port, watching ``MASTER_NAME``."""

    def __init__(
        self, workdir: Path, primary_port: int, *, primary_password: str | None = None,
        password: str | None = None,
    ) -> None:  # fmt: skip
        self.port = free_tcp_port()
        self.workdir = workdir
        self.primary_port = primary_port
        self.primary_password = primary_password  # sentinel auth-pass
        self.password = password  # the sentinel's own requirepass
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Write its config and start it (it answers PING at once; it learns of its
        peers and the replica over the next hello periods: see :meth:`SentinelGroup.wait_ready`)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.workdir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary_port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            + (f"sentinel auth-pass {MASTER_NAME} {self.primary_password}\n"
               if self.primary_password else "")
            + (f"requirepass {self.password}\n" if self.password else "")
        )  # fmt: skip
        self.process = subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(lambda: bool(self.client().ping()), "sentinel did not start")

    def client(self) -> redis.Redis:
        """A client of this sentinel."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, password=self.password
        )

    def master_port(self) -> int | None:
        """The port of the primary this sentinel names now (None: it does not answer)."""
        with contextlib.suppress(redis.RedisError):
            address = self.client().sentinel_get_master_addr_by_name(MASTER_NAME)
            if isinstance(address, tuple | list):
                return int(address[1])
        return None

    def kill(self) -> None:
        """SIGKILL it (teardown)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None


class SentinelGroup:
    """A primary, its replica and three sentinels (quorum two)."""

    def __init__(
        self, workdir: Path, *, password: str | None = None, sentinel_password: str | None = None
    ) -> None:
        """``password``: the primary's and replica's requirepass; ``sentinel_password``:
        the sentinels' own."""
        # diskless sync without the default 5 s wait for more replicas to join
        replica_args = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
        self.password = password
        self.primary = ThrowawayRedis(workdir / "primary", replica_args, password)
        self.replica = ThrowawayRedis(
            workdir / "replica",
            ("--replicaof", "127.0.0.1", str(self.primary.port), *replica_args),
            password,
        )
        self.sentinels = [
            ThrowawaySentinel(
                workdir / f"sentinel{k}", self.primary.port,
                primary_password=password, password=sentinel_password,
            )
            for k in range(3)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        """The broker URL: every sentinel, ``;``-separated (kombu's syntax); the
        primary's password, if any, in every part (kombu reads it from the part
        it is using, and moves to the next part when a sentinel fails)."""
        auth = f":{self.password}@" if self.password else ""
        return ";".join(f"sentinel://{auth}127.0.0.1:{s.port}/0" for s in self.sentinels)

    def start(self, timeout: float = 30.0) -> None:
        """Start everything and wait until the replica is in sync and every sentinel
        knows the replica and both other sentinels (a failover needs them).

        :raises TimeoutError: the group did not form in time.
        """
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        _wait(self._formed, "the sentinel group did not form", timeout)

    def _formed(self) -> bool:
        link = self.replica.client().info("replication").get("master_link_status")
        if link != "up":
            return False
        for sentinel in self.sentinels:
            state = sentinel.client().sentinel_master(MASTER_NAME)
            assert isinstance(state, dict)
            if int(state["num-other-sentinels"]) < len(self.sentinels) - 1:
                return False
            if int(state["num-slaves"]) < 1:
                return False
        return True

    def kill_primary(self) -> None:
        """SIGKILL the primary: whatever it held and had not replicated is gone."""
        self.primary.kill()

    def wait_promoted(self, timeout: float = 60.0) -> float:
        """Wait until every sentinel names the replica as the primary and it accepts
        writes; return how long that took.

        :raises TimeoutError: no failover in time.
        """
        started = time.monotonic()

        def promoted() -> bool:
            if any(s.master_port() != self.replica.port for s in self.sentinels):
                return False
            role = self.replica.client().info("replication").get("role")
            return role == "master"

        _wait(promoted, "the sentinels did not promote the replica", timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        """Kill every process of the group (teardown; idempotent)."""
        for sentinel in self.sentinels:
            sentinel.kill()
        self.replica.kill()
        self.primary.kill()


def _wait(ready: object, message: str, timeout: float = 20.0) -> None:
    """Poll ``ready()`` every 50 ms until it is true.

    :raises TimeoutError: with ``message`` when it never was.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            if ready():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise TimeoutError(message)
