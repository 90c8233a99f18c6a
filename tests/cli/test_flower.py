"""Flower 2.2 against a running lane worker: lane tasks are readable by name and
carry only the request id."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from powerq.services import free_tcp_port
from powerq.states import Action
from powerq.supervisor import ProcessGroup
from powerq.tasks.routing import lane_for
from tests.cli.processes import http_get, wait_until
from tests.stack import Stack

pytestmark = [pytest.mark.ipmi, pytest.mark.slow]


def _step_task(base: str, request_id: uuid.UUID) -> dict[str, Any] | None:
    status, body = http_get(f"{base}/api/tasks?taskname=powerq.step")
    if status != 200:
        return None
    tasks = json.loads(body)
    return next((t for t in tasks.values() if str(request_id) in str(t.get("args"))), None)


def test_flower_reads_lane_tasks_by_name_with_only_the_id(live: Stack, tmp_path: Path) -> None:
    (name,) = live.register_fleet(1)
    port = free_tcp_port()
    base = f"http://127.0.0.1:{port}"
    flower = ProcessGroup(env={**os.environ, "FLOWER_UNAUTHENTICATED_API": "1"}, log_dir=tmp_path)
    child = flower.start("flower", [
        sys.executable, "-m", "celery", "-A", "powerq.tasks", "flower",
        "--address=127.0.0.1", f"--port={port}",
    ])  # fmt: skip
    try:
        wait_until(lambda: http_get(f"{base}/api/workers")[0] == 200, "Flower answering", 60,
                   lambda: child.alive, child.log_path)  # fmt: skip
        task = None
        for action in (Action.OFF, Action.ON, Action.OFF):  # Flower may join the events late
            request_id = live.submit(name, action)
            live.wait_finished([request_id])
            try:
                task = wait_until(
                    lambda rid=request_id: _step_task(base, rid),
                    "task in Flower",
                    20,
                    lambda: child.alive,
                    child.log_path,
                )
                break
            except AssertionError:
                continue
        assert task is not None, "Flower never showed a powerq.step task"
    finally:
        flower.stop_all()

    assert task["name"] == "powerq.step"
    assert task["args"] in (f"['{request_id}']", f"('{request_id}',)")
    assert task["kwargs"] == "{}"
    assert task["worker"].startswith(f"lane{lane_for(name, live.lanes)}@")
