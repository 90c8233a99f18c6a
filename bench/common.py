"""Shared plumbing of the benchmarks: throwaway services, processes, stats, tables, results.

Every benchmark runs in its own process (``python -m bench NAME``) so that its
``POWERQ_*`` environment is set before :mod:`powerq.tasks` reads it. It gets a
throwaway PostgreSQL database (``powerq_bench_<random>``, dropped at the end)
and a private Redis (a ``redis-server`` on a free loopback port, stopped at
the end), so a test run on the same machine can neither flush its lanes nor
steal its messages. Every process a benchmark starts is in a
:class:`~powerq.supervisor.ProcessGroup` (killed by process group on exit).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_DIR = BENCH_DIR.parent
SYSTEM_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
SYSTEM_REDIS = ("127.0.0.1", 6379)
# The test suite spreads its sessions over Redis databases 1-15 (tests/services.py)
# and flushes "its" one, so no shared database number is safe: a private
# redis-server is used when the binary exists; this one only as a fallback.
FALLBACK_REDIS_DB = 0


# --- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    return statistics.median(values) if values else float("nan")


# --- results ------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the figures table: goal, baseline, powerq and their ratio."""

    benchmark: str
    metric: str
    unit: str
    goal: str
    baseline_label: str
    baseline: float | None
    powerq: float
    ratio: float | None
    met: bool | None
    note: str = ""


@dataclass
class Result:
    """What one benchmark writes to ``bench/results/NAME.json``."""

    name: str
    params: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    machine: dict[str, Any] = field(default_factory=lambda: machine_info())

    def add(self, row: Row) -> None:
        """Append a figures row."""
        self.rows.append(row)

    def write(self) -> Path:
        """Write the JSON (overwriting the previous run of this benchmark); return its path."""
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        payload = asdict(self)
        payload["duration_s"] = round(time.time() - self.started_at, 1)
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        return path


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table: up to ``digits`` significant digits, '-' for None/NaN."""
    if value is None or value != value:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def rows_table(rows: Sequence[Row]) -> str:
    """The figures rows as a text table."""
    return table(
        ["benchmark", "metric", "goal", "baseline", "powerq", "ratio", "met"],
        [
            [
                r.benchmark,
                f"{r.metric} ({r.unit})",
                r.goal,
                f"{fmt(r.baseline)} [{r.baseline_label}]" if r.baseline_label else fmt(r.baseline),
                fmt(r.powerq),
                fmt(r.ratio),
                {True: "yes", False: "NO", None: "-"}[r.met],
            ]
            for r in rows
        ],
    )


def say(*parts: object) -> None:
    """Progress line on stderr (stdout carries the tables)."""
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


# --- machine ------------------------------------------------------------------------------


def _command_version(argv: Sequence[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _package_versions() -> dict[str, str]:
    from importlib import metadata

    names = [
        "powerq",
        "celery",
        "kombu",
        "redis",
        "sqlalchemy",
        "psycopg",
        "alembic",
        "flask",
        "apiflask",
        "gunicorn",
        "pyghmi",
        "pydantic",
        "cryptography",
    ]
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_info() -> dict[str, Any]:
    """CPU, memory, load and software versions, for the record."""
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "git_head": commit,
        "packages": _package_versions(),
        "ipmitool": _command_version(["ipmitool", "-V"]),
        "ipmipower": _command_version([shutil.which("ipmipower") or "/usr/sbin/ipmipower", "-V"]),
        "wrk": _command_version(["wrk", "--version"]),
        "redis_server": _command_version([_redis_server() or "redis-server", "--version"]),
    }


# --- services -----------------------------------------------------------------------------


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Services:
    """The throwaway database and private broker of one benchmark."""

    database_url: str  # postgresql+psycopg://…
    broker_url: str
    admin_url: str
    database_name: str
    data_dir: Path
    processes: Any  # ProcessGroup

    @property
    def psycopg_url(self) -> str:
        """The database URL for plain psycopg."""
        return self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _with_database(admin_url: str, name: str) -> str:
    base, _, query = admin_url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


def _admin_postgres(data_dir: Path, handles: list[Any]) -> str:
    import psycopg

    if port_open("127.0.0.1", 5432):
        try:
            with psycopg.connect(SYSTEM_PG, connect_timeout=3):
                return SYSTEM_PG
        except psycopg.Error:
            pass
    from powerq.services import start_embedded_postgres

    say("system PostgreSQL not reachable: starting an embedded one")
    url, handle = start_embedded_postgres(data_dir / "embedded")
    handles.append(handle)
    return url.replace("postgresql+psycopg://", "postgresql://").replace("/powerq?", "/postgres?")


def _redis_server() -> str | None:
    """The redis-server binary to run privately (the system's first)."""
    return shutil.which("redis-server", path="/usr/bin:/usr/local/bin") or shutil.which(
        "redis-server"
    )


def _broker(group: Any, handles: list[Any], data_dir: Path, redis_url: str | None) -> str:
    if redis_url:
        return redis_url
    binary = _redis_server()
    if binary:
        port = free_port()
        group.start(
            "redis",
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(data_dir),
            ],
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.05)
        return f"redis://127.0.0.1:{port}/0"
    if port_open(*SYSTEM_REDIS):
        return f"redis://{SYSTEM_REDIS[0]}:{SYSTEM_REDIS[1]}/{FALLBACK_REDIS_DB}"
    from powerq.services import start_embedded_redis

    url, handle = start_embedded_redis(data_dir, port=0)
    handles.append(handle)
    return url


@contextlib.contextmanager
def bench_services(lanes: int, *, redis_url: str | None = None) -> Iterator[Services]:
    """A fresh migrated database and a private broker; env exported; all removed after.

    Must be entered before anything imports :mod:`powerq.tasks` (the Celery app
    reads the broker URL and lane count once, at import).
    """
    import psycopg
    from cryptography.fernet import Fernet

    from powerq.supervisor import ProcessGroup

    data_dir = Path(tempfile.mkdtemp(prefix="powerq-bench-"))
    handles: list[Any] = []
    group = ProcessGroup(log_dir=data_dir / "logs")
    name = f"powerq_bench_{uuid.uuid4().hex[:10]}"
    admin = ""
    try:
        admin = _admin_postgres(data_dir, handles)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        database_url = _with_database(admin, name).replace(
            "postgresql://", "postgresql+psycopg://", 1
        )
        broker_url = _broker(group, handles, data_dir, redis_url)
        os.environ.update(
            POWERQ_DATABASE_URL=database_url,
            POWERQ_BROKER_URL=broker_url,
            POWERQ_DATA_DIR=str(data_dir / "data"),
            POWERQ_SECRET_KEY=Fernet.generate_key().decode(),
            POWERQ_LANES=str(lanes),
        )
        group.env = dict(os.environ)
        from powerq.config import get_settings
        from powerq.migrate import upgrade

        get_settings.cache_clear()
        upgrade(database_url)
        yield Services(database_url, broker_url, admin, name, data_dir, group)
    finally:
        group.stop_all(timeout=10)
        with contextlib.suppress(Exception):
            from powerq.db import reset_engines

            reset_engines()
        if admin:
            with contextlib.suppress(Exception), psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        from powerq.services import stop_embedded

        stop_embedded(handles)
        shutil.rmtree(data_dir, ignore_errors=True)


def set_lanes(lanes: int) -> None:
    """Change the lane count this process routes with (the Celery app must have been
    imported with at least this many lanes, see :func:`bench_services`)."""
    from powerq.config import get_settings

    os.environ["POWERQ_LANES"] = str(lanes)
    get_settings.cache_clear()


# --- processes ----------------------------------------------------------------------------


def descendants(pid: int) -> list[tuple[int, int]]:
    """``pid`` and all its descendants (from /proc), each with its depth below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out: list[tuple[int, int]] = []
    todo = [(pid, 0)]
    while todo:
        current, depth = todo.pop()
        out.append((current, depth))
        todo.extend((child, depth + 1) for child in children.get(current, []))
    return out


def memory_of(pid: int) -> dict[str, Any]:
    """RSS and PSS (MiB) and the command line of one process."""
    info: dict[str, Any] = {"pid": pid}
    with contextlib.suppress(OSError):
        info["cmd"] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Dirty", "Private_Clean"):
                info[key.lower() + "_mib"] = round(int(rest.split()[0]) / 1024, 1)
    return info


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds the processes used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_by_party() -> dict[int, tuple[str, float]]:
    """Every process on the machine: pid -> (party, user + system CPU seconds so far).

    The party is what the process is to a benchmark (``postgres``, ``redis``, ``fleet``,
    ``lanes``, ``api``, ``control``, ``profiler``, ``other``), from its command line;
    :func:`cpu_delta_by_party` turns two snapshots into CPU seconds per party.
    """
    import psutil

    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        info = proc.info
        times = info.get("cpu_times")
        if times is None:
            continue
        out[proc.pid] = (
            _party(info.get("name") or "", info.get("cmdline") or []),
            times.user + times.system,
        )
    return out


def _party(name: str, cmdline: list[str]) -> str:
    line = " ".join(cmdline)
    if name.startswith("postgres") or "postgres:" in line:
        return "postgres"
    if name.startswith("redis"):
        return "redis"
    if "simfleet" in line:
        return "fleet"
    if "--lane" in line or "--hostname lane" in line or "powerq.tasks.worker lane" in line:
        return "lanes"  # a lane's worker (and, run through the CLI, its launcher)
    if "gunicorn" in line or "powerq.api" in line:
        return "api"
    if "py-spy" in line:
        return "profiler"
    if "worker" in line or "beat" in line:
        return "control"
    return "other"


def cpu_delta_by_party(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds each party used between two :func:`cpu_by_party` snapshots
    (a process that started in between counts from zero; one that ended is lost)."""
    out: dict[str, float] = {}
    for pid, (party, cpu) in after.items():
        start = before.get(pid, (party, 0.0))[1]
        out[party] = round(out.get(party, 0.0) + max(0.0, cpu - start), 2)
    return dict(sorted(out.items(), key=lambda item: -item[1]))


def wait_until(ready: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    """Poll ``ready()`` until true.

    :raises TimeoutError: not ready within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        time.sleep(poll)


# --- powerq fixtures ----------------------------------------------------------------------

# Loopback addresses a fleet may bind, in order: a 10,000-port UDP range on 127.0.0.1
# may not be free when other fleets (other engineers' tests) hold ports in it.
FLEET_ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@contextlib.contextmanager
def sim_fleet(count: int, **options: Any) -> Iterator[Any]:
    """A running ``SimFleetProcess`` on the first loopback address with room for it.

    :raises FleetStartError: it could not start on any of FLEET_ADDRESSES.
    """
    from powerq.bmc.simfleet.launcher import FleetStartError, SimFleetProcess

    error: Exception | None = None
    for address in FLEET_ADDRESSES:
        fleet = SimFleetProcess(count, address=address, **options)
        try:
            fleet.start()
        except (OSError, FleetStartError) as exc:
            fleet.stop()
            error = exc
            say(f"fleet of {count} could not start on {address}: {exc}")
            continue
        try:
            yield fleet
        finally:
            fleet.stop()
        return
    raise FleetStartError(f"no loopback address had room for {count} BMCs: {error}")


def register_nodes(manifest: Sequence[dict[str, Any]]) -> list[str]:
    """Register the fleet's BMCs as nodes of the manifest's driver (IPMI, or Redfish
    with its system path and CA bundle) in bulk INSERTs; return their names.

    (``inventory.create_node`` one by one costs a savepoint, an event and an
    encryption per node: fine for tests, slow for 10,000 nodes. The rows are the
    same, with one encrypted copy of the shared password.)
    """
    from sqlalchemy import insert

    from powerq.db import session_scope
    from powerq.models import Node
    from powerq.secrets import encrypt_password
    from powerq.states import DriverKind

    secrets: dict[str, bytes] = {}
    rows = []
    for bmc in manifest:
        password = bmc["password"]
        if password not in secrets:
            secrets[password] = encrypt_password(password)
        rows.append(
            {
                "name": bmc["name"],
                "driver": DriverKind(bmc.get("driver", DriverKind.IPMI.value)),
                "bmc_address": bmc["address"],
                "bmc_port": bmc["port"],
                "bmc_username": bmc["username"],
                "bmc_password_encrypted": secrets[password],
                "bmc_system": bmc.get("system"),
                "verify_tls": True,
                "ca_bundle": bmc.get("ca_bundle"),
                "tags": [],
            }
        )
    with session_scope() as session:
        for start in range(0, len(rows), 2000):
            session.execute(insert(Node), rows[start : start + 2000])
    return [bmc["name"] for bmc in manifest]


@dataclass
class LaneWorkers:
    """``powerq worker --lane K`` for K in 0..lanes-1, as the Procfile runs them (one
    Celery worker process with a thread pool of ``POWERQ_LANE_FANOUT``)."""

    group: Any
    lanes: int
    whatif: bool = False  # bench/whatif_worker.py instead (recommended fixes patched in)

    @property
    def roles(self) -> dict[int, str]:
        """Process role by depth in a lane's process tree."""
        return {0: "celery main", 1: "child"}

    def _argv(self, lane: int) -> list[str]:
        if self.whatif:
            return ["bench.whatif_worker", str(lane)]
        return ["powerq.cli", "worker", "--lane", str(lane), "--loglevel", "WARNING"]

    def start(self, timeout: float = 180.0) -> float:
        """Start every lane worker and wait until each answers a ping; return seconds taken."""
        from powerq.tasks.app import app

        started = time.monotonic()
        for lane in range(self.lanes):
            self.group.python(
                f"lane{lane}",
                *self._argv(lane),
                extra_env={"POWERQ_LANES": str(self.lanes), "PYTHONPATH": str(REPO_DIR)},
            )
        host = socket.gethostname()
        waiting = {f"lane{lane}@{host}" for lane in range(self.lanes)}
        deadline = time.monotonic() + timeout
        while waiting:
            for reply in app.control.ping(destination=sorted(waiting), timeout=1.0):
                waiting -= set(reply)
            dead = [c.name for c in self.group.dead() if c.name.startswith("lane")]
            if dead:
                raise RuntimeError(f"lane workers died: {dead}; logs in {self.group.log_dir}")
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"lane workers not up: {sorted(waiting)}")
        return time.monotonic() - started

    def pids(self) -> dict[int, list[tuple[int, int]]]:
        """Each lane's process tree (the Celery worker, nothing below it)."""
        return {
            lane: descendants(self.group.children[f"lane{lane}"].process.pid)
            for lane in range(self.lanes)
        }

    def memory(self) -> list[dict[str, Any]]:
        """RSS/PSS of every process of every lane, labelled by role."""
        out = []
        roles = self.roles
        for lane, pids in self.pids().items():
            for pid, depth in pids:
                role = roles.get(depth, f"depth {depth}")
                out.append({"lane": lane, "role": role, **memory_of(pid)})
        return out

    def stop(self) -> None:
        """Stop every lane worker (process groups)."""
        for lane in range(self.lanes):
            self.group.stop(f"lane{lane}", timeout=10)


def flush_broker() -> None:
    """Empty the private broker database (between runs)."""
    import redis

    redis.Redis.from_url(os.environ["POWERQ_BROKER_URL"]).flushdb()


# --- the API ------------------------------------------------------------------------------

# gunicorn exactly as `powerq up` starts it (powerq/up.py).
# Its config sets the worker class (gthread, answering gunicorn's own errors as problem+json).
GUNICORN_AS_SHIPPED = [
    "--config", "python:powerq.gunicorn_conf", "--workers", "2", "--threads", "8",
]  # fmt: skip


def create_api_token(role: str = "operator", name: str = "bench") -> str:
    """A bearer token of ``role`` (plaintext)."""
    from powerq.db import session_scope
    from powerq.tokens import create_token

    with session_scope() as session:
        _, token = create_token(session, role=role, name=name)
    return token


def start_gunicorn(
    group: Any,
    name: str,
    app: str,
    extra_args: Sequence[str] = (),
    health: str = "/healthz",
    extra_env: dict[str, str] | None = None,
) -> str:
    """Start ``gunicorn APP`` (as shipped) on a free loopback port; return its base URL."""
    import urllib.request

    port = free_port()
    group.python(
        name,
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        *GUNICORN_AS_SHIPPED,
        "--log-level",
        "warning",
        *extra_args,
        app,
        extra_env=extra_env,
    )
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def up() -> bool:
        if not group.children[name].alive:
            raise RuntimeError(f"{name} died; see {group.children[name].log_path}")
        try:
            with opener.open(url + health, timeout=2) as response:
                return bool(response.status < 500)
        except OSError:
            return False

    wait_until(up, 60, f"{name} at {url}", poll=0.2)
    return url


def start_control_and_beat(group: Any, extra_env: dict[str, str] | None = None) -> None:
    """The control worker (sweeper, monitor, batch pump) and beat, as `powerq up` runs them."""
    group.python(
        "control", "powerq.cli", "worker", "--control", "--loglevel", "WARNING", extra_env=extra_env
    )
    group.python("beat", "powerq.cli", "beat", "--loglevel", "WARNING", extra_env=extra_env)
