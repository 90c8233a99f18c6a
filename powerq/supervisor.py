"""A small process supervisor: start named children, restart them, stop them all cleanly.

Used by ``powerq up`` (embedded services, API, lane workers, control worker,
Flower, sim fleet) and by the tests and benchmarks that run real workers as
subprocesses. Each child gets its own session (process group), so stopping it
also stops whatever it forked (gunicorn's workers): nothing is left behind.

A child is either a program (``start``/``python``: fork and exec) or a
function run in a forked copy of this process (``fork``): a parent that has
imported what its children need (the lane workers' Celery, SQLAlchemy and
powerq modules) shares those pages with every child it forks, so each extra
child costs only what it writes.

With ``die_with_parent`` a child gets a parent-death signal
(``prctl(PR_SET_PDEATHSIG)``, Linux): if the supervisor is killed, even with
SIGKILL, every such child gets that signal at once.

Restarts follow a :class:`RestartPolicy`: exponential backoff while a child
keeps dying young, and a budget of restarts that refills over time (a token
bucket), so a crash-looping child is retried more and more slowly, but never
given up on and never takes the others down.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
_libc: ctypes.CDLL | None = None


def _prctl(option: int, value: int | bytes) -> None:
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(option, value, 0, 0, 0)


def die_with_parent(sig: signal.Signals, parent: int) -> None:
    """In a child: get ``sig`` when the parent (pid ``parent``) dies; if it
    already has, send it now."""
    _prctl(PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def set_process_name(name: str) -> None:
    """The name ``ps -o comm``, ``top`` and psutil's ``name()`` show (15 bytes, Linux)."""
    _prctl(PR_SET_NAME, name.encode()[:15])


class Handle(Protocol):
    """What the supervisor needs of a running child (``subprocess.Popen`` has it)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...


class Forked:
    """A child made with ``os.fork``, with the part of ``Popen``'s interface we use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode


@dataclass(frozen=True)
class RestartPolicy:
    """How soon a dead child is started again.

    The delay doubles from ``base_s`` up to ``max_s`` while the child keeps
    dying within ``stable_s`` of its start. Independently, ``burst`` restarts
    are allowed at once and the allowance refills at ``burst`` per
    ``window_s``: beyond it, a restart waits for the budget to refill. Never a
    final count: a child is always started again, only later.
    """

    base_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 30.0
    burst: int = 5
    window_s: float = 60.0


class Backoff:
    """One child's restart history under a :class:`RestartPolicy`."""

    def __init__(self, policy: RestartPolicy, now: float) -> None:
        self.policy = policy
        self.tokens = float(policy.burst)
        self.stamp = now
        self.failures = 0

    def delay(self, ran_s: float, now: float) -> float:
        """Seconds to wait before the next start of a child that ran ``ran_s`` seconds."""
        p = self.policy
        rate = p.burst / p.window_s
        self.tokens = min(float(p.burst), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        self.failures = 0 if ran_s >= p.stable_s else self.failures + 1
        backoff = min(p.base_s * 2.0 ** max(self.failures - 1, 0), p.max_s)
        self.tokens -= 1.0
        budget_wait = max(0.0, -self.tokens / rate)  # until the budget is back in credit
        return max(backoff, budget_wait)


@dataclass
class Child:
    """One supervised process, and how to start it again."""

    name: str
    argv: list[str]
    process: Handle
    log_path: Path | None
    spawn: Callable[[], Handle]
    stop_signal: signal.Signals = signal.SIGTERM
    started: float = field(default_factory=time.monotonic)

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
    die_with_parent: bool = False
    # Without a log_dir: children write to this process's stdout (True) or nowhere.
    inherit_output: bool = False

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        extra_env: Mapping[str, str] | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        user: str | None = None,
    ) -> Child:
        """Start ``argv`` as child ``name`` (replacing a dead child of that name).

        ``stop_signal`` is what asks it to stop (and, with ``die_with_parent``,
        what it gets when this process dies). With ``user`` (needs root) it runs
        as that user, in its primary group and no other.

        :raises RuntimeError: a live child of that name exists.
        :raises KeyError: ``user`` does not exist.
        :raises OSError: the program cannot be started.
        """
        self._check_free(name)
        env = {**self.env, **(extra_env or {})}
        parent = os.getpid()
        preexec = (lambda: die_with_parent(stop_signal, parent)) if self.die_with_parent else None

        def spawn() -> Handle:
            _log_path, output = self._output(name)
            try:
                return subprocess.Popen(
                    list(argv),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=preexec,
                    user=user,
                    group=_primary_group(user),  # not root's group, nor its other groups
                    extra_groups=None if user is None else [],
                )
            finally:
                if not isinstance(output, int):
                    output.close()

        return self._add(Child(name, list(argv), spawn(), self._log_path(name), spawn, stop_signal))

    def fork(
        self,
        name: str,
        run: Callable[[], int],
        *,
        stop_signal: signal.Signals = signal.SIGTERM,
        close_fds: Sequence[int] = (),
    ) -> Child:
        """Run ``run()`` in a forked copy of this process as child ``name``; its
        return value is the child's exit code. Call only while this process has
        a single thread. ``close_fds`` are closed in the child (e.g. a lock).

        :raises RuntimeError: a live child of that name exists.
        """
        self._check_free(name)
        parent = os.getpid()

        def spawn() -> Handle:
            _, output = self._output(name)
            out_fd = output if isinstance(output, int) else output.fileno()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid:
                if not isinstance(output, int):
                    output.close()
                return Forked(pid)
            code = 70
            try:
                _become_child(name, out_fd, close_fds, stop_signal, parent, self.die_with_parent)
                code = run()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

        return self._add(Child(name, [], spawn(), self._log_path(name), spawn, stop_signal))

    def _check_free(self, name: str) -> None:
        if name in self.children and self.children[name].alive:
            raise RuntimeError(f"{name} is already running")

    def _add(self, child: Child) -> Child:
        self.children[child.name] = child
        return child

    def restart(self, name: str) -> Child:
        """Start dead child ``name`` again, the same way.

        :raises RuntimeError: it is still running.
        """
        child = self.children[name]
        self._check_free(name)
        child.process = child.spawn()
        child.started = time.monotonic()
        return child

    def _log_path(self, name: str) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"{name}.log"

    def _output(self, name: str) -> tuple[Path | None, IO[bytes] | int]:
        path = self._log_path(name)
        if path is None:
            return None, sys.stdout.fileno() if self.inherit_output else subprocess.DEVNULL
        return path, open_private_log(path)

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

    def signal_all(self, skip: Sequence[str] = ()) -> None:
        """Ask every child but ``skip`` to stop (its stop signal), without waiting."""
        for child in self.children.values():
            if child.name not in skip and child.alive:
                _signal(child, child.stop_signal)

    def stop(self, name: str, timeout: float = 20.0) -> None:
        """Send child ``name`` its stop signal; SIGKILL its group after ``timeout`` seconds."""
        child = self.children.pop(name, None)
        if child is None:
            return
        if child.alive:
            _signal(child, child.stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and child.process.poll() is None:
            time.sleep(0.05)
        _signal_group(child.process.pid, signal.SIGKILL)  # whatever is left of the group, too
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(5)

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


def _primary_group(user: str | None) -> int | None:
    """``user``'s primary group id (None for None).

    :raises KeyError: no such user.
    """
    if user is None:
        return None
    import pwd

    return pwd.getpwnam(user).pw_gid


def open_private_log(path: Path) -> IO[bytes]:
    """``path`` opened for appending, mode 0600 in a 0700 directory (made if missing;
    an existing file or directory is narrowed to those modes): logs hold BMC
    addresses, user names and request paths.

    :raises OSError: the directory or file cannot be made or opened.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def _become_child(
    name: str,
    out_fd: int,
    close_fds: Sequence[int],
    stop_signal: signal.Signals,
    parent: int,
    die: bool,
) -> None:
    """In a freshly forked child: own session, output to the log, parent's
    signal handlers and private fds gone, optionally dying with the parent."""
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    if out_fd < 0:  # subprocess.DEVNULL: no log
        out_fd = devnull
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.close(devnull)
    set_process_name(name)
    if die:
        die_with_parent(stop_signal, parent)


def _signal(child: Child, sig: signal.Signals) -> None:
    """The whole group for SIGTERM-style stops; PostgreSQL-style servers (stop
    signal SIGINT) only at their main process, which stops its own children."""
    if sig == signal.SIGINT:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child.process.pid, sig)
    else:
        _signal_group(child.process.pid, sig)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
