"""``powerq up`` as a user runs it: embedded PostgreSQL and Redis (no URLs set), a sim
fleet, the API, lanes, beat and Flower; a batch through the CLI; SIGTERM; nothing left.
Also what it leaves readable (issue 17): Flower only with the printed credentials, a
private data dir and logs, and no token from a query string or header in the access log."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
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
        flower = f"http://127.0.0.1:{flower_port}/api/workers"
        auth = _flower_auth(data_dir, log.read_text())
        assert wait_until(lambda: _get(flower, basic=auth) == 200, "Flower answering", 60,
                          lambda: True)  # fmt: skip
        assert http_get(flower)[0] == 401
        _assert_access_log_keeps_no_secret(url, data_dir / "logs" / "api.log")
        _assert_private(data_dir)
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
    # the embedded PostgreSQL could still reach its files through the private data dir
    assert "PANIC" not in (data_dir / "logs" / "postgres.log").read_text()
    assert referencing(str(data_dir)) == []  # embedded PostgreSQL and Redis too


def _flower_auth(data_dir: Path, announced: str) -> str:
    """Flower's ``user:password`` from its 0600 file, checked against what up printed."""
    path = data_dir / "flower-auth"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    auth = path.read_text().strip()
    user, _, password = auth.partition(":")
    assert f"user {user}, password {password}" in announced and str(path) in announced
    return auth


def _get(url: str, *, basic: str | None = None, bearer: str | None = None) -> int:
    """GET ``url`` on loopback; its status (0: nothing answered)."""
    request = urllib.request.Request(url)
    if basic is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(basic.encode()).decode())
    if bearer is not None:
        request.add_header("Authorization", f"Bearer {bearer}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _assert_access_log_keeps_no_secret(url: str, api_log: Path) -> None:
    """A token in the query string and one in Authorization: the request is logged,
    neither token is."""
    path = f"/v1/nodes/probe-{uuid.uuid4().hex}"
    secret, secret2 = f"SECRET{uuid.uuid4().hex}", f"SECRET2{uuid.uuid4().hex}"
    status = _get(f"{url}{path}?access_token={secret}&token={secret}", bearer=secret2)
    assert status == 401
    line = wait_until(lambda: next((ln for ln in api_log.read_text().splitlines() if path in ln),
                                   None), "the access log line", 10, lambda: True)  # fmt: skip
    assert " 401 " in line
    text = api_log.read_text()
    assert secret not in text and secret2 not in text and "access_token" not in text


def _assert_private(data_dir: Path) -> None:
    """The data dir is closed to other users (as root, the embedded PostgreSQL's own
    user may only pass through it); the logs are 0600 in a 0700 directory."""
    pg_owner = (data_dir / "pg").stat().st_uid
    expected = 0o700 if pg_owner == os.getuid() else 0o710
    assert stat.S_IMODE(data_dir.stat().st_mode) == expected
    logs = data_dir / "logs"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    modes = {log.name: stat.S_IMODE(log.stat().st_mode) for log in logs.iterdir()}
    assert "api.log" in modes and "flower.log" in modes
    assert set(modes.values()) == {0o600}, modes
