"""Benchmark 10: what one ``powerq`` command costs in CPU (issue 16: "a CLI that starts instantly").

Each command runs as its own process, ``--repeats`` times, interleaved in
rounds so that drift on the shared machine hits all alike; the figure is the
median CPU time (user + system, from ``getrusage(RUSAGE_CHILDREN)`` around
each run), never wall time:

* ``python -c pass`` with the same interpreter: the baseline, what starting
  Python costs at all;
* ``powerq --version`` and ``powerq --help`` (the console script as installed);
* ``powerq power NODE query`` against a real powerq API (gunicorn as shipped,
  on loopback, with a throwaway database and one registered node; no lane
  worker, so every call after the first is answered with the outstanding
  query request), with stdout a pipe as in a script: the plain table;
* the same on a terminal (a pseudo-terminal as stdout): the rich table, for
  information.

Python compiles a module it finds no bytecode cache for on every import, and
that costs more than the import itself. The goal rows run as an installed
powerq normally does, with caches: the children get a private
``PYTHONPYCACHEPREFIX`` (in the benchmark's temporary directory, so the tree is
not written to), filled by a warm-up run. The ``no .pyc`` rows run with
``PYTHONDONTWRITEBYTECODE=1`` and whatever caches the tree has: none for
site-packages and powerq when everything was installed and run that way (as
on this project's machine, whose sessions set it; uv does not compile at
install), the standard library's always.

Goal (from the issue): ``--version`` and ``power NODE query`` at most 0.15 s each.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import common
from bench.common import Result, Row, median, say

GOAL_S = 0.15
NODE = "cli-cost-node"
SERVER = "real powerq API (gunicorn as shipped, loopback)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench cli_cost``."""
    parser.add_argument("--repeats", type=int, default=15, help="runs of each command (default 15)")


def powerq_script() -> str:
    """The installed ``powerq`` console script next to this interpreter (else on PATH).

    :raises RuntimeError: there is none.
    """
    beside = Path(sys.executable).parent / "powerq"
    found = str(beside) if beside.exists() else shutil.which("powerq")
    if not found:
        raise RuntimeError("no `powerq` console script: pip install -e . first")
    return found


def cpu_seconds_of(argv: Sequence[str], env: dict[str, str], *, tty: bool = False) -> float:
    """CPU seconds (user + system) of one run of ``argv``, stdout a pipe or a terminal.

    :raises RuntimeError: the command failed.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if tty:
        leader, follower = os.openpty()
        try:
            done = subprocess.run(argv, env=env, stdout=follower, stderr=subprocess.PIPE)
        finally:
            os.close(follower)
            os.close(leader)  # the table fits the pty's buffer: nothing blocks on it
    else:
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr!r}")
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


Command = tuple[list[str], dict[str, str], bool]  # argv, environment, stdout a terminal


def measure(commands: dict[str, Command], repeats: int) -> dict[str, list[float]]:
    """Each command ``repeats`` times, one of each per round (after one warm-up run each)."""
    for argv, env, tty in commands.values():
        cpu_seconds_of(argv, env, tty=tty)  # page cache, bytecode caches
    samples: dict[str, list[float]] = {label: [] for label in commands}
    for round_ in range(repeats):
        for label, (argv, env, tty) in commands.items():
            samples[label].append(cpu_seconds_of(argv, env, tty=tty))
        say(f"round {round_}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in samples.items()))
    return samples


def environments(base: dict[str, str], cache_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The children's environment with bytecode caches (in ``cache_dir``), and without."""
    cached = {key: value for key, value in base.items() if key != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(cache_dir)
    uncached = {key: value for key, value in base.items() if key != "PYTHONPYCACHEPREFIX"}
    uncached["PYTHONDONTWRITEBYTECODE"] = "1"
    return cached, uncached


def run(args: argparse.Namespace) -> Result:
    """The commands against a real API on a throwaway database."""
    result = Result("cli_cost", {"repeats": args.repeats, "server": SERVER})
    powerq = powerq_script()
    with common.bench_services(1, redis_url=args.redis_url) as services:
        bmc = {"address": "127.0.0.1", "port": 623, "username": "admin", "password": "pw"}
        common.register_nodes([{"name": NODE, **bmc}])  # no BMC answers: nothing runs it
        token = common.create_api_token("operator", "bench-cli")
        url = common.start_gunicorn(services.processes, "api", "powerq.api.wsgi:app")
        base_env = {**os.environ, "POWERQ_API_URL": url, "POWERQ_TOKEN": token}
        env, no_pyc = environments(base_env, services.data_dir / "pycache")
        query = [powerq, "power", NODE, "query"]
        commands: dict[str, Command] = {
            "python -c pass": ([sys.executable, "-c", "pass"], env, False),
            "powerq --version": ([powerq, "--version"], env, False),
            "powerq --help": ([powerq, "--help"], env, False),
            "powerq power NODE query": (query, env, False),
            "powerq power NODE query (terminal)": (query, env, True),
            "powerq --version (no .pyc)": ([powerq, "--version"], no_pyc, False),
            "powerq power NODE query (no .pyc)": (query, no_pyc, False),
        }
        samples = measure(commands, args.repeats)
    base = median(samples["python -c pass"])
    goals = {"powerq --version": GOAL_S, "powerq power NODE query": GOAL_S}
    for label, values in samples.items():
        if label == "python -c pass":
            continue
        cpu = median(values)
        goal = goals.get(label)
        note = f"median of {len(values)}, min {min(values):.3f} s"
        if "power" in label:
            note += f"; server: {SERVER}; stdout a {'pty' if 'terminal' in label else 'pipe'}"
        result.add(
            Row("10 cli cost", f"{label} CPU", "s", f"<= {goal} s" if goal else "(info)",
                "python -c pass", base, cpu, cpu / base, cpu <= goal if goal else None, note)
        )  # fmt: skip
    result.details.update(samples_s=samples, powerq=powerq, python=sys.executable)
    return result
