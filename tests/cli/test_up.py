"""``powerq up`` as a user runs it: embedded PostgreSQL and Redis (no URLs set), a sim
fleet, the API, lanes, beat and Flower; a batch through the CLI; SIGTERM; nothing left."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from powerq.services import free_tcp_port
from tests.cli.processes import http_get, referencing, still_running, wait_until

pytestmark = [pytest.mark.ipmi, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# Variables the suite sets that a first-time user would not have.
_UNSET = ("POWERQ_DATABASE_URL", "POWERQ_BROKER_URL", "POWERQ_SECRET_KEY", "POWERQ_TOKEN",
          "POWERQ_API_URL")  # fmt: skip


def test_up_runs_a_batch_and_sigterm_leaves_no_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {key: value for key, value in os.environ.items() if key not in _UNSET}
    env.update(POWERQ_DATA_DIR=str(data_dir), POWERQ_LANES="2")
    port, flower_port = free_tcp_port(), free_tcp_port()
    log = tmp_path / "up.log"
    argv = [
        sys.executable, "-m", "powerq.cli", "up", "--sim-nodes", "5", "--transition", "0.5",
        "--port", str(port), "--flower", "--flower-port", str(flower_port), "--api-workers", "1",
    ]  # fmt: skip
    with log.open("wb") as output:
        up = subprocess.Popen(argv, env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    descendants: list[psutil.Process] = []
    try:
        wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), "powerq up ready",
                   240, lambda: up.poll() is None, log)  # fmt: skip
        descendants = psutil.Process(up.pid).children(recursive=True)
        token_file = data_dir / "admin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        url = f"http://127.0.0.1:{port}"
        assert url in log.read_text() and token_file.read_text().strip() in log.read_text()

        batch = subprocess.run(
            [sys.executable, "-m", "powerq.cli", "batch", "off", "--all", "--wait", "--json"],
            env={**env, "POWERQ_API_URL": url, "POWERQ_TOKEN": token_file.read_text().strip()},
            capture_output=True, text=True, timeout=240,
        )  # fmt: skip

        assert batch.returncode == 0, batch.stdout + batch.stderr
        result = json.loads(batch.stdout)
        assert result["counts"]["succeeded"] == 5 and result["total"] == 5
        flower = wait_until(lambda: http_get(f"http://127.0.0.1:{flower_port}/api/workers")[0]
                            == 200, "Flower answering", 60, lambda: True)  # fmt: skip
        assert flower
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            up.kill()
            raise

    assert up.returncode == 0, log.read_text()[-3000:]
    assert "stopped" in log.read_text()
    assert len(descendants) >= 8  # fleet, API, 2 lanes, control, beat, Flower, their children
    assert still_running(descendants) == []
    assert referencing(str(data_dir)) == []  # embedded PostgreSQL and Redis too
