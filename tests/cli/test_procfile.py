"""The Procfile runs under ``honcho start`` against configured services: web, the
agent (two lanes) and beat serve a batch driven through the CLI, and honcho stops
them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

from powerq.bmc.simfleet.launcher import SimFleetProcess
from powerq.cli import main
from powerq.db import engine_for
from powerq.migrate import upgrade
from powerq.services import free_tcp_port, start_embedded_redis, stop_embedded
from powerq.tokens import create_token
from tests.cli.processes import http_get, still_running, wait_until
from tests.services import SuiteServices, create_database, drop_database, with_database

pytestmark = [pytest.mark.ipmi, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_the_procfile_is_valid() -> None:
    check = subprocess.run(["honcho", "check"], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    for process in ("web", "agent", "beat", "flower"):
        assert process in check.stderr
    assert "lane0" not in check.stderr  # lanes are the agent's


@pytest.fixture
def own_services(services: SuiteServices, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fresh database on the suite's PostgreSQL and a private Redis: honcho's workers
    must not meet the other tests' workers on the same lanes."""
    name = f"powerq_honcho_{uuid.uuid4().hex[:8]}"
    create_database(services.admin_pg_url, name)
    database_url = with_database(services.admin_pg_url, name).replace(
        "postgresql://", "postgresql+psycopg://", 1
    )
    upgrade(database_url)
    broker_url, handle = start_embedded_redis(tmp_path / "redis", port=0)
    try:
        yield {"POWERQ_DATABASE_URL": database_url, "POWERQ_BROKER_URL": broker_url}
    finally:
        stop_embedded([handle])
        engine_for(database_url).dispose()
        drop_database(services.admin_pg_url, name)


def _cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def _admin_token(database_url: str) -> str:
    with Session(engine_for(database_url)) as session:
        _, token = create_token(session, role="admin", name="honcho-test")
        session.commit()
    return token


def test_honcho_start_serves_a_batch(own_services: dict[str, str], tmp_path: Path) -> None:
    port = free_tcp_port()
    env = {
        **os.environ,
        **own_services,
        "POWERQ_LANES": "2",
        "POWERQ_WEB_BIND": f"127.0.0.1:{port}",
        "POWERQ_WEB_WORKERS": "1",
        "POWERQ_DATA_DIR": str(tmp_path / "data"),
        "POWERQ_API_URL": f"http://127.0.0.1:{port}",
    }
    env["POWERQ_TOKEN"] = _admin_token(own_services["POWERQ_DATABASE_URL"])
    log = tmp_path / "honcho.log"
    with SimFleetProcess(count=3, transition=0.5) as fleet, log.open("wb") as output:
        manifest = tmp_path / "fleet.json"
        manifest.write_text(json.dumps(fleet.manifest))
        honcho = subprocess.Popen(
            ["honcho", "start", "web", "agent", "beat"],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200,
                "the web process answering",
                90,
                lambda: honcho.poll() is None,
                log,
            )
            children = psutil.Process(honcho.pid).children(recursive=True)
            imported = _cli(env, "nodes", "import", str(manifest))
            batch = _cli(env, "batch", "off", "--all", "--max-in-flight", "2", "--wait", "--json")
        finally:
            os.kill(honcho.pid, signal.SIGTERM)  # honcho passes it on to every process
            try:
                honcho.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(honcho.pid, signal.SIGKILL)
                raise

    assert imported.exit_code == 0, imported.output
    assert batch.exit_code == 0, batch.output + log.read_text()[-3000:]
    assert json.loads(batch.stdout)["counts"]["succeeded"] == 3
    assert still_running(children) == []
