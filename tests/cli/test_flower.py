"""Flower 2.2 against running lane workers, started as the Procfile starts it
(``powerq flower`` with ``POWERQ_FLOWER_AUTH``): lane tasks are readable by name
and carry only the request id; nothing is done or read without credentials, and
no other origin may drive it (issue 17).

One Flower for the module (it takes seconds to start on a loaded host).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from powerq.cli import main
from powerq.services import free_tcp_port
from powerq.states import Action
from powerq.supervisor import Child, ProcessGroup
from powerq.tasks.app import app
from powerq.tasks.routing import lane_for
from tests.cli.processes import wait_until
from tests.stack import Stack

pytestmark = [pytest.mark.ipmi, pytest.mark.slow]

AUTH = "ops:s3cret-for-the-test"
EVIL = "http://evil.example"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


@dataclass
class Flower:
    """A running Flower and how to reach it."""

    base: str
    child: Child

    def call(self, path: str, method: str = "GET", *, auth: str | None = None,
             origin: str | None = None) -> tuple[int, Message, bytes]:  # fmt: skip
        """``method path`` (optionally with basic auth and an Origin); (status, headers, body),
        status 0 when nothing answers."""
        request = urllib.request.Request(f"{self.base}{path}", method=method,
                                         data=b"" if method == "POST" else None)  # fmt: skip
        if auth is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        if origin is not None:
            request.add_header("Origin", origin)
        try:
            with _OPENER.open(request, timeout=5) as response:
                return int(response.status), response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.headers, exc.read()
        except OSError:
            return 0, Message(), b""


@pytest.fixture(scope="module")
def flower(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flower]:
    """``powerq flower`` with basic auth; a stray FLOWER_UNAUTHENTICATED_API in the
    environment must not open it up."""
    port = free_tcp_port()
    env = {**os.environ, "POWERQ_FLOWER_AUTH": AUTH, "FLOWER_UNAUTHENTICATED_API": "1"}
    group = ProcessGroup(env=env, log_dir=tmp_path_factory.mktemp("flower"))
    argv = [sys.executable, "-m", "powerq.cli", "flower", "--port", str(port)]
    child = group.start("flower", argv)
    running = Flower(f"http://127.0.0.1:{port}", child)
    try:
        wait_until(lambda: running.call("/api/workers", auth=AUTH)[0] == 200, "Flower answering",
                   60, lambda: child.alive, child.log_path)  # fmt: skip
        yield running
    finally:
        group.stop_all()


def _lane_worker() -> str:
    """Lane 0's Celery node name (a real worker of the package's stack)."""
    return f"lane0@{socket.gethostname()}"


def _answers_ping(worker: str) -> bool:
    return bool(app.control.ping(destination=[worker], timeout=1.0))


def test_flower_refuses_to_start_without_credentials() -> None:
    env = {"POWERQ_FLOWER_AUTH": "", "FLOWER_UNAUTHENTICATED_API": "1"}
    result = CliRunner().invoke(main, ["flower"], env=env)
    assert result.exit_code == 2
    assert "POWERQ_FLOWER_AUTH must be user:password" in result.output


def test_the_procfile_runs_flower_only_through_powerq_flower() -> None:
    procfile = (Path(__file__).resolve().parents[2] / "Procfile").read_text()
    entries = dict(line.split(": ", 1) for line in procfile.splitlines() if ": " in line
                   and not line.startswith("#"))  # fmt: skip
    assert entries["flower"].startswith("powerq flower ")
    assert "UNAUTHENTICATED" not in procfile
    assert "python:powerq.gunicorn_conf" in entries["web"]


def test_worker_shutdown_without_credentials_is_refused(live: Stack, flower: Flower) -> None:
    worker = _lane_worker()
    assert _answers_ping(worker)

    cross_site = flower.call(f"/api/worker/shutdown/{worker}", "POST", origin=EVIL)
    same_site = flower.call(f"/api/worker/shutdown/{worker}", "POST")

    assert cross_site[0] in (401, 403), cross_site  # 403: Flower's cross-origin check comes first
    assert same_site[0] == 401, same_site
    for _, headers, body in (cross_site, same_site):
        assert headers.get("Access-Control-Allow-Origin") is None
        assert b"Shutting down" not in body
    assert wait_until(lambda: _answers_ping(worker), "the worker answering", 10, lambda: True)


def test_a_foreign_origin_gets_no_cors_even_with_credentials(live: Stack, flower: Flower) -> None:
    worker = _lane_worker()

    post = flower.call(f"/api/worker/shutdown/{worker}", "POST", auth=AUTH, origin=EVIL)
    preflight = flower.call(f"/api/worker/shutdown/{worker}", "OPTIONS", origin=EVIL)
    read = flower.call("/api/tasks", auth=AUTH, origin=EVIL)

    assert post[0] == 403, post
    for _, headers, _ in (post, preflight, read):
        assert headers.get("Access-Control-Allow-Origin") is None
    assert wait_until(lambda: _answers_ping(worker), "the worker answering", 10, lambda: True)


def test_reads_need_credentials(live: Stack, flower: Flower) -> None:
    status, _, _ = flower.call("/api/workers")
    wrong, _, _ = flower.call("/api/workers", auth="ops:wrong")
    ok, _, _ = flower.call("/api/workers", auth=AUTH)

    assert (status, wrong, ok) == (401, 401, 200)
    listed = wait_until(  # Flower lists a worker once its inspection answered
        lambda: _lane_worker() in json.loads(flower.call("/api/workers?refresh=1", auth=AUTH)[2]),
        "lane 0 listed by Flower", 30, lambda: flower.child.alive, flower.child.log_path,
    )  # fmt: skip
    assert listed


def _step_task(flower: Flower, request_id: uuid.UUID) -> dict[str, Any] | None:
    status, _, body = flower.call("/api/tasks?taskname=powerq.step", auth=AUTH)
    if status != 200:
        return None
    tasks = json.loads(body)
    return next((t for t in tasks.values() if str(request_id) in str(t.get("args"))), None)


def test_flower_reads_lane_tasks_by_name_with_only_the_id(live: Stack, flower: Flower) -> None:
    """The message's arguments are the request id alone; Flower shows the node and
    the action beside it (the message's ``kwargsrepr``), and never a credential."""
    (name,) = live.register_fleet(1)
    task = None
    for action in (Action.OFF, Action.ON, Action.OFF):  # Flower may join the events late
        request_id = live.submit(name, action)
        live.wait_finished([request_id])
        try:
            task = wait_until(
                lambda rid=request_id: _step_task(flower, rid),
                "task in Flower",
                20,
                lambda: flower.child.alive,
                flower.child.log_path,
            )
            break
        except AssertionError:
            continue
    assert task is not None, "Flower never showed a powerq.step task"

    assert task["name"] == "powerq.step"
    assert task["args"] in (f"['{request_id}']", f"('{request_id}',)")
    assert task["kwargs"] == repr({"node": name, "action": action.value})
    assert task["worker"].startswith(f"lane{lane_for(name, live.lanes)}@")
    (bmc,) = [row for row in live.fleet.manifest if row["name"] == name]
    assert bmc["password"] not in json.dumps(task)


def test_credentials_file_is_made_once_and_private(tmp_path: Path) -> None:
    from powerq.flower import read_or_create_auth

    first = read_or_create_auth(tmp_path)
    again = read_or_create_auth(tmp_path)

    assert first == again and first.startswith("powerq:") and len(first) > 30
    assert (tmp_path / "flower-auth").stat().st_mode & 0o777 == 0o600
