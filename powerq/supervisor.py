"""A small process supervisor: start named child processes, stop them all cleanly.

Used by ``powerq up`` (API, lane workers, beat, Flower, sim fleet) and by the
tests and benchmarks that run real workers as subprocesses. Each child gets
its own process group, so stopping it also stops whatever it forked (Celery's
prefork children, gunicorn's workers): nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path | None

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None


@dataclass
class ProcessGroup:
    """Named children started with a shared environment; stopped newest first."""

    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    log_dir: Path | None = None
    children: dict[str, Child] = field(default_factory=dict)

    def start(
        self, name: str, argv: Sequence[str], *, extra_env: Mapping[str, str] | None = None
    ) -> Child:
        """Start ``argv`` as child ``name`` (replacing a dead child of that name).

        :raises RuntimeError: a live child of that name exists.
        :raises OSError: the program cannot be started.
        """
        if name in self.children and self.children[name].alive:
            raise RuntimeError(f"{name} is already running")
        log_path, output = self._output(name)
        process = subprocess.Popen(
            list(argv),
            env={**self.env, **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if output not in (None, subprocess.DEVNULL):
            output.close()  # type: ignore[union-attr]
        child = Child(name, list(argv), process, log_path)
        self.children[name] = child
        return child

    def _output(self, name: str) -> tuple[Path | None, IO[bytes] | int]:
        if self.log_dir is None:
            return None, subprocess.DEVNULL
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{name}.log"
        return path, path.open("ab")

    def python(self, name: str, *args: str, extra_env: Mapping[str, str] | None = None) -> Child:
        """Start ``python -m …`` with this interpreter (e.g. ``"powerq.cli", "worker"``)."""
        return self.start(name, [sys.executable, "-m", *args], extra_env=extra_env)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to child ``name``'s whole process group (fault injection)."""
        child = self.children[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(30)

    def stop(self, name: str, timeout: float = 20.0) -> None:
        """SIGTERM child ``name``'s group, SIGKILL it after ``timeout`` seconds."""
        child = self.children.pop(name, None)
        if child is None:
            return
        _stop_group(child.process, timeout)

    def stop_all(self, timeout: float = 20.0) -> None:
        """Stop every child, newest first (workers before the things they use)."""
        for name in reversed(list(self.children)):
            self.stop(name, timeout)

    def dead(self) -> list[Child]:
        """Children that exited on their own."""
        return [child for child in self.children.values() if not child.alive]

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    _signal_group(process.pid, signal.SIGKILL)  # whatever is left of the group, too
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
