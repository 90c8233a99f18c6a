"""``powerq agent`` processes for tests: start them with an environment, read their
logs, see who holds which lane, stop them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from sqlalchemy import text

from powerq.db import session_scope


def holders() -> dict[int, str]:
    """lane -> agent name, for leases that have not expired."""
    with session_scope() as session:
        rows = session.execute(
            text("SELECT lane, owner FROM lane_leases WHERE expires_at > now()")
        ).all()
    return {lane: owner for lane, owner in rows}


def workers(agent: subprocess.Popen[bytes], count: int) -> list[psutil.Process] | None:
    """The agent's lane workers once there are ``count`` of them."""
    children = psutil.Process(agent.pid).children()
    return children if len(children) == count else None


class Agents:
    """Agents started as ``python -m powerq.cli agent``, each logging to a file."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, **env}
        self.running: dict[str, subprocess.Popen[bytes]] = {}  # the latest of each name
        self.started: list[subprocess.Popen[bytes]] = []  # every one, for stop_all

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start agent ``name`` (``args``: more options, ``env``: more variables)."""
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "powerq.cli", "agent", "--name", name, *args],
                env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.running[name] = process
        self.started.append(process)
        return process

    def stop(self, name: str) -> int:
        """SIGTERM agent ``name`` and wait for it; its exit code."""
        process = self.running[name]
        process.send_signal(signal.SIGTERM)
        return process.wait(60)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        """Stop every agent started, a refused second one of a name included."""
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
