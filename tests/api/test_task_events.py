"""Celery's task events (a Redis message per publish and three per task run) are
on only when Flower asks for them: ``POWERQ_TASK_EVENTS=1``, which
``powerq up --flower`` sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from powerq.up import UpOptions, _child_env

REPO = Path(__file__).resolve().parents[2]


def _sent_event(env: dict[str, str]) -> str:
    code = (
        "import celeryconfig; "
        "print(celeryconfig.task_send_sent_event, celeryconfig.worker_send_task_events)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "False False"), ("0", "False False"), ("1", "True True")]
)
def test_task_events_follow_powerq_task_events(value: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "POWERQ_TASK_EVENTS"}
    if value is not None:
        env["POWERQ_TASK_EVENTS"] = value
    assert _sent_event(env) == expected


def _options(flower: bool) -> UpOptions:
    return UpOptions(
        sim_nodes=0,
        transition=0.0,
        host="127.0.0.1",
        port=8000,
        flower=flower,
        flower_port=5555,
        api_workers=1,
    )


def test_powerq_up_with_flower_turns_it_on() -> None:
    with_flower = _child_env(_options(True))
    without = _child_env(_options(False))
    assert with_flower["POWERQ_TASK_EVENTS"] == "1"
    assert without.get("POWERQ_TASK_EVENTS") == os.environ.get("POWERQ_TASK_EVENTS")
