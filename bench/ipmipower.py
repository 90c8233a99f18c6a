"""FreeIPMI's ``ipmipower`` as the baseline of the batch benchmark (bench/batch.py).

``ipmipower`` is what HPC sites use to power thousands of nodes at once (behind
powerman and many SLURM power-saving setups): one C process, asynchronous
RMCP+ sessions to up to ``-F`` BMCs at a time. bench/batch.py runs it on the
same simulated fleet as powerq, in the same run, in three variants:

* ``--off``: unverified, done when every BMC acknowledged the command (the
  machines are still in their transition);
* ``--off --wait-until-off``: verified, done when every BMC reported off
  (ipmipower polls each BMC every ``--retransmission-wait-timeout``, 500 ms);
* ``--on --wait-until-on``: the same for power on.

Flags, and why (see BENCHMARKS.md, benchmark 1):

* ``-D LAN_2_0``: IPMI 2.0 / RMCP+. ipmipower's default driver is IPMI 1.5
  (``LAN``); the sim advertises RMCP+ only (as many HP and Supermicro BMCs do)
  and ipmipower then stops with "authentication type unavailable for attempted
  privilege level".
* ``-l admin``: the privilege powerq and the ipmitool baselines log in with
  (ipmipower's default, operator, also suffices for Chassis Control).
* ``-I 3``: cipher suite 3, ipmipower's default, spelled out because the
  ipmitool baselines pass ``-C 3`` and powerq's pyghmi negotiates suite 3 too:
  the same crypto for everyone.
* ``-F 64``: the fanout (ipmipower's default is 64 too), the figure quoted in
  issue 15.
* ``-h 127.0.0.1:PORT,...``: every sim BMC has its own UDP port on one
  loopback address; ipmipower's ``host:port`` syntax names each one.
* No ``--workaround-flags``: the sim needs none.

ipmipower resends an unanswered request after ``--retransmission-timeout``
(400 ms) under a new rqSeq and ignores late answers to earlier copies: a BMC
that answers later than that executes the power command once per copy
(tests/bmc/test_ipmipower.py). That is what the duplicate counts catch.

Nothing here starts the fleet or counts executions: bench/batch.py does both,
so ipmipower and powerq are measured by the same code.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTALL_HINT = "ipmipower is not installed: apt-get install -y freeipmi-tools"
FANOUT = 64
RUN_TIMEOUT_S = 600.0
FLAGS = ("-D", "LAN_2_0", "-l", "admin", "-I", "3")


@dataclass(frozen=True)
class Variant:
    """One way of running ipmipower over the fleet."""

    name: str
    flags: tuple[str, ...]
    start_state: str  # every machine is put in this state first (control API, not timed)
    target_state: str
    verified: bool


VARIANTS: tuple[Variant, ...] = (
    Variant("off", ("--off",), "on", "off", False),
    Variant("off_wait", ("--off", "--wait-until-off"), "on", "off", True),
    Variant("on_wait", ("--on", "--wait-until-on"), "off", "on", True),
)


def binary() -> str | None:
    """Path of ``ipmipower`` (Debian installs it in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("ipmipower")
    if found:
        return found
    fallback = Path("/usr/sbin/ipmipower")
    return str(fallback) if os.access(fallback, os.X_OK) else None


def argv(
    program: str,
    bmcs: Sequence[dict[str, Any]],
    flags: Sequence[str],
    fanout: int = FANOUT,
) -> list[str]:
    """The ipmipower command line for manifest rows ``bmcs`` (all with one user/password)."""
    users = {(row["username"], row["password"]) for row in bmcs}
    if len(users) != 1:
        raise ValueError("one ipmipower run needs one username and password for every BMC")
    [(username, password)] = users
    hosts = ",".join(f"{row['address']}:{row['port']}" for row in bmcs)
    return [
        program,
        *FLAGS,
        "-u",
        username,
        "-p",
        password,
        "-F",
        str(fanout),
        "-h",
        hosts,
        *flags,
    ]


def outcomes(output: str) -> dict[str, int]:
    """How many hosts ipmipower reported with each message (``127.0.0.1: ok`` -> ``ok``).

    Hosts that share an address are not told apart in its output (the port is
    not printed), so only the counts are meaningful.
    """
    counts: collections.Counter[str] = collections.Counter()
    for line in output.splitlines():
        _, sep, message = line.rpartition(": ")
        if sep:
            counts[message.strip()] += 1
        elif line.strip():
            counts[f"(other) {line.strip()[:80]}"] += 1
    return dict(counts)


def reap(pid: int, timeout: float) -> tuple[int, float]:
    """Wait for child ``pid`` to exit; return (exit code, its user + system CPU seconds).

    ``wait4`` gives the CPU of exactly that process, as time(1) does.

    :raises TimeoutError: it is still running after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    fd: int | None = None
    with contextlib.suppress(AttributeError, OSError):
        fd = os.pidfd_open(pid)
    try:
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"ipmipower still running after {timeout:.0f} s")
            if fd is not None:
                select.select([fd], [], [], remaining)
            else:
                time.sleep(min(0.005, remaining))
    finally:
        if fd is not None:
            os.close(fd)


def run(
    group: Any,
    name: str,
    bmcs: Sequence[dict[str, Any]],
    variant: Variant,
    fanout: int = FANOUT,
    timeout: float = RUN_TIMEOUT_S,
) -> dict[str, Any]:
    """Run ipmipower once as child ``name`` of ``group`` (a ``ProcessGroup`` with a log
    directory); return wall seconds (start to exit), CPU seconds, exit code and the
    count of each per-host message.

    :raises RuntimeError: ipmipower is not installed (the message says how to install it).
    :raises TimeoutError: it did not finish within ``timeout`` (it is stopped).
    """
    program = binary()
    if program is None:
        raise RuntimeError(INSTALL_HINT)
    command = argv(program, bmcs, variant.flags, fanout)
    log = Path(group.log_dir or ".") / f"{name}.log"
    offset = log.stat().st_size if log.exists() else 0  # the group appends to its logs
    start = time.perf_counter()
    child = group.start(name, command)
    try:
        code, cpu = reap(child.process.pid, timeout)
        wall = time.perf_counter() - start
        child.process.returncode = code  # reaped here: Popen must not wait for it again
    finally:
        group.stop(name, timeout=5)
    output = ""
    if child.log_path is not None:
        with child.log_path.open("rb") as handle:
            handle.seek(offset)
            output = handle.read().decode(errors="replace")
    counts = outcomes(output)
    return {
        "variant": variant.name,
        "flags": [*FLAGS, "-F", str(fanout), *variant.flags],
        "wall_s": wall,
        "cpu_s": cpu,
        "exit_code": code,
        "outcomes": counts,
        "hosts_ok": counts.get("ok", 0),
    }
