"""``powerq up``: the whole stack in one process tree, for a first run or a demo.

Starts, in order: PostgreSQL and Redis (embedded when no URLs are set),
migrations, a simulated IPMI fleet registered as nodes, the API (gunicorn),
one worker per lane, the control worker, beat, and optionally Flower. Prints
where everything is and an admin token, then supervises until Ctrl-C or
SIGTERM, when it stops every child (whole process groups) and the embedded
services, leaving no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click
from sqlalchemy.orm import Session

from powerq.config import get_settings
from powerq.db import session_scope
from powerq.errors import ServiceUnavailable
from powerq.inventory import ImportOutcome, NodeSpec, import_node
from powerq.migrate import upgrade
from powerq.services import ensure_services, free_tcp_port
from powerq.states import DriverKind
from powerq.supervisor import ProcessGroup
from powerq.tokens import create_token, verify_token

ADMIN_TOKEN_FILE = "admin-token"
READY_TIMEOUT_S = 120.0
_MAX_RESTARTS = 5


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
@click.option("--api-workers", default=2, show_default=True, help="gunicorn worker processes.")
def up(**options: object) -> None:
    """Run the whole stack until Ctrl-C (embedded services when no URLs are set)."""
    run(UpOptions(**options))  # type: ignore[arg-type]


def run(options: UpOptions) -> None:
    """Start everything, supervise, and stop everything on a signal."""
    data_dir = get_settings().data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)  # the admin token goes there even with URLs set
    with _signals_stop(), ensure_services() as services:
        upgrade(services.database_url)
        group = ProcessGroup(env=_child_env(options), log_dir=data_dir / "logs")
        try:
            nodes = _start_fleet(group, options, data_dir) if options.sim_nodes else 0
            token = _admin_token(data_dir)
            _start_celery(group, options)
            api_url = _start_api(group, options)
            _wait_workers(group)
            _announce(options, api_url, token, nodes, data_dir, services.embedded)
            _supervise(group)
        except _Stop:
            click.echo("stopping …")
        finally:
            _stop_everything(group)
    click.echo("stopped")


def _child_env(options: UpOptions) -> dict[str, str]:
    """The children's environment. Flower's setting is in it (not only in Flower's
    own start) so that a Flower restarted by :func:`_supervise` keeps its API."""
    env = dict(os.environ)
    if options.flower:
        env["FLOWER_UNAUTHENTICATED_API"] = "1"  # bound to 127.0.0.1 only
        env["POWERQ_TASK_EVENTS"] = "1"  # publishers send task-sent events (celeryconfig)
    return env


def _stop_everything(group: ProcessGroup) -> None:
    """SIGTERM every child but the simulated fleet at once (so they shut down in
    parallel, not one after another), then stop them all newest first: the fleet
    goes last, after the workers that talk to it."""
    for child in list(group.children.values()):
        if child.name != "simfleet":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.process.pid, signal.SIGTERM)
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
    """Run the simulated fleet and register its BMCs as nodes; return how many."""
    from powerq.bmc.simfleet.ports import free_udp_range

    manifest = data_dir / "fleet.json"
    manifest.unlink(missing_ok=True)
    group.python(
        "simfleet",
        "powerq.bmc.simfleet",
        "--count", str(options.sim_nodes),
        "--base-port", str(free_udp_range(options.sim_nodes)),
        "--transition", str(options.transition),
        "--manifest", str(manifest),
        "--control-port", str(free_tcp_port()),
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
        _, token = create_token(session, role="admin", name="powerq-up")
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def _start_celery(group: ProcessGroup, options: UpOptions) -> None:
    for lane in range(get_settings().lanes):
        group.python(f"lane{lane}", "powerq.cli", "worker", "--lane", str(lane))
    group.python("control", "powerq.cli", "worker", "--control")
    group.python("beat", "powerq.cli", "beat")
    if options.flower:
        group.python(
            "flower",
            "celery", "-A", "powerq.tasks", "flower",
            "--address=127.0.0.1", f"--port={options.flower_port}",
        )  # fmt: skip


def _wait_workers(group: ProcessGroup) -> None:
    """Wait until every lane worker and the control worker answer a ping.

    ``powerq worker`` restarts its Celery worker by itself, so a worker that
    cannot start (e.g. a broken installation) never shows up as a dead child:
    only a ping tells that the lanes really run.

    :raises ServiceUnavailable: some did not answer in time (their logs are named).
    """
    from powerq.tasks.app import app

    host = socket.gethostname()
    names = {f"lane{lane}": f"lane{lane}@{host}" for lane in range(get_settings().lanes)}
    names["control"] = f"control@{host}"
    waiting = dict(names)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while waiting and time.monotonic() < deadline:
        for reply in app.control.ping(destination=list(waiting.values()), timeout=1.0):
            waiting = {child: node for child, node in waiting.items() if node not in reply}
    if waiting:
        logs = ", ".join(str(group.children[child].log_path) for child in sorted(waiting))
        raise ServiceUnavailable(f"{', '.join(sorted(waiting))} did not start; see {logs}")


def _start_api(group: ProcessGroup, options: UpOptions) -> str:
    url = f"http://{options.host}:{options.port}"
    group.python(
        "api",
        "gunicorn",
        "--bind", f"{options.host}:{options.port}",
        "--workers", str(options.api_workers),
        "--worker-class", "gthread", "--threads", "8",
        "--access-logfile", "-",
        "powerq.api.wsgi:app",
    )  # fmt: skip
    _wait_for(lambda: _healthy(url), group, "api", f"the API at {url}")
    return url


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _wait_for(ready: Callable[[], bool], group: ProcessGroup, child: str, what: str) -> None:
    """Poll ``ready()`` until true.

    :raises ServiceUnavailable: the child died or did not get ready in time.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        if not group.children[child].alive:
            break
        time.sleep(0.2)
    log = group.children[child].log_path
    raise ServiceUnavailable(f"{what} did not start; see {log}")


def _announce(
    options: UpOptions, api_url: str, token: str, nodes: int, data_dir: Path, embedded: bool
) -> None:
    lanes = get_settings().lanes
    lines = [
        "",
        f"powerq is up: {nodes} simulated nodes, {lanes} lanes"
        + (" (embedded PostgreSQL and Redis)" if embedded else ""),
        f"  API          {api_url}   (OpenAPI: {api_url}/v1/openapi.json)",
        f"  status page  {api_url}/",
    ]
    if options.flower:
        lines.append(f"  Flower       http://127.0.0.1:{options.flower_port}")
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


def _supervise(group: ProcessGroup) -> None:
    """Restart a child that died (a few times), until a signal stops us."""
    restarts: dict[str, int] = {}
    while True:
        time.sleep(1.0)
        for child in group.dead():
            count = restarts.get(child.name, 0) + 1
            if count > _MAX_RESTARTS:
                raise ServiceUnavailable(f"{child.name} keeps dying; see {child.log_path}")
            restarts[child.name] = count
            click.echo(f"{child.name} exited ({child.process.returncode}); restarting", err=True)
            group.start(child.name, child.argv)
