"""``powerq up`` as a process tree: one per data dir, restarts a crash-looping lane
with backoff while the API stays up, leaves nothing behind when SIGKILLed, comes
back with the fleet as it was, and stops cleanly (embedded PostgreSQL included).

One stack for the module (embedded PostgreSQL and Redis, 2 lanes, 2 sim BMCs);
the tests run in order against it. Waits are bounded; nothing asserts a duration.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from powerq.services import free_tcp_port
from tests.cli.processes import http_get, referencing, still_running, wait_until

pytestmark = [pytest.mark.ipmi, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
_UNSET = ("POWERQ_DATABASE_URL", "POWERQ_BROKER_URL", "POWERQ_SECRET_KEY", "POWERQ_TOKEN",
          "POWERQ_API_URL")  # fmt: skip
KILLS = 10


@dataclass
class Up:
    """A running ``powerq up`` and where it lives."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    env: dict[str, str]
    url: str
    log: Path

    def text(self) -> str:
        """What ``powerq up`` and its agent (which restarts the lanes) wrote."""
        agent_log = self.data_dir / "logs" / "agent.log"
        agent = agent_log.read_text(errors="replace") if agent_log.exists() else ""
        return self.log.read_text(errors="replace") + agent

    def alive(self) -> bool:
        return self.process.poll() is None

    def child(self, name: str) -> psutil.Process | None:
        """The descendant named ``name`` (forked workers carry their name)."""
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if child.name() == name and child.status() != psutil.STATUS_ZOMBIE:
                    return child
            except psutil.NoSuchProcess:
                continue
        return None


def _start(data_dir: Path, port: int, log: Path) -> Up:
    env = {key: value for key, value in os.environ.items() if key not in _UNSET}
    env.update(POWERQ_DATA_DIR=str(data_dir), POWERQ_LANES="2",
               # a fast policy, so that ten deaths fit in a short test
               POWERQ_RESTART_BACKOFF_MAX_S="1", POWERQ_RESTART_BURST="2",
               POWERQ_RESTART_WINDOW_S="4")  # fmt: skip
    argv = [sys.executable, "-m", "powerq.cli", "up", "--sim-nodes", "2", "--transition", "0.2",
            "--port", str(port)]  # fmt: skip
    ready = "Ctrl-C stops everything"
    before = log.read_text().count(ready) if log.exists() else 0
    with log.open("ab") as output:
        process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    up = Up(process, data_dir, env, f"http://127.0.0.1:{port}", log)
    wait_until(lambda: up.text().count(ready) > before, "powerq up", 240, up.alive, log)
    return up


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    base = tmp_path_factory.mktemp("up-crash")
    running = _start(base / "data", free_tcp_port(), base / "up.log")
    yield running
    if running.alive():
        running.process.kill()


def test_a_second_up_on_the_same_data_dir_is_refused_in_one_line(up: Up) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "powerq.cli", "up", "--port", str(free_tcp_port())],
        env=up.env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert second.returncode == 1
    lines = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
    expected = (f"powerq up is already running for {up.data_dir} "
                f"(pid {up.process.pid}, API {up.url})")  # fmt: skip
    assert lines == [expected]


def test_a_lane_killed_ten_times_is_restarted_with_backoff_and_the_api_stays_up(up: Up) -> None:
    seen: set[int] = set()

    def new_lane() -> psutil.Process | None:
        lane = up.child("lane0")
        return lane if lane is not None and lane.pid not in seen else None

    for _ in range(KILLS):
        lane = wait_until(new_lane, "lane0 started again", 60, up.alive, up.log)
        seen.add(lane.pid)
        lane.send_signal(signal.SIGKILL)
        assert http_get(f"{up.url}/healthz")[0] == 200
    exits = r"lane0 exited \(-9\); restarting in ([\d.]+) s"
    # the last kill is seen by the supervisor (not only sent), then lane0 runs again
    wait_until(lambda: len(re.findall(exits, up.text())) >= KILLS, "the last exit noticed", 30,
               up.alive, up.log)  # fmt: skip
    wait_until(lambda: (up.data_dir / "run" / "lane0.ready").exists() and new_lane(),
               "lane0 consuming again", 120, up.alive, up.log)  # fmt: skip

    delays = [float(d) for d in re.findall(exits, up.text())]
    assert len(delays) == KILLS
    assert delays[1] > delays[0]  # backoff: a lane that keeps dying waits longer
    assert max(delays) > 1.0  # beyond the longest backoff: the budget ran out and refills
    assert up.alive() and http_get(f"{up.url}/healthz")[0] == 200
    assert up.child("lane1") is not None  # the other lane was left alone


def test_sigkill_leaves_nothing_and_a_restart_keeps_the_fleet(up: Up) -> None:
    manifest = json.loads((up.data_dir / "fleet.json").read_text())
    token = (up.data_dir / "admin-token").read_text().strip()
    client = {**up.env, "POWERQ_API_URL": up.url, "POWERQ_TOKEN": token}
    on = subprocess.run(
        [sys.executable, "-m", "powerq.cli", "power", manifest[0]["name"], "on", "--wait"],
        env=client, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert on.returncode == 0, on.stdout + on.stderr
    off = subprocess.run(
        [sys.executable, "-m", "powerq.cli", "power", manifest[1]["name"], "off", "--wait"],
        env=client, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert off.returncode == 0, off.stdout + off.stderr
    descendants = psutil.Process(up.process.pid).children(recursive=True)
    assert len(descendants) >= 8  # postgres (+ its own), redis, fleet, 2 lanes, control, API

    up.process.send_signal(signal.SIGKILL)
    up.process.wait(10)
    wait_until(lambda: not still_running(descendants), "every process of it gone", 10,
               lambda: True)  # fmt: skip
    assert referencing(str(up.data_dir)) == []  # embedded PostgreSQL and Redis too

    again = _start(up.data_dir, int(up.url.rsplit(":", 1)[1]), up.log)
    up.process = again.process
    assert json.loads((up.data_dir / "fleet.json").read_text()) == manifest  # same ports
    states = json.loads((up.data_dir / "simfleet-state.json").read_text())
    assert states == {manifest[0]["name"]: True, manifest[1]["name"]: False}


def test_sigterm_stops_everything_embedded_postgres_included(up: Up) -> None:
    descendants = psutil.Process(up.process.pid).children(recursive=True)
    postgres = [p for p in descendants if p.name() == "postgres"]
    assert postgres

    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(120) == 0, up.text()[-3000:]

    assert up.log.read_text().rstrip().endswith("stopped")
    assert still_running(descendants) == []
    assert referencing(str(up.data_dir)) == []
    assert not (up.data_dir / "pg" / "postmaster.pid").exists()
