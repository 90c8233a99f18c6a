"""Read the power state of every BMC of a 1,000-BMC simulated fleet through the IPMI driver.

Prints the wall time of a cold pass (includes one RMCP+ login per BMC) and a
warm pass (sessions reused), per-call latency percentiles, and a baseline:
the system ``ipmitool -I lanplus -C 3 ... chassis power status`` (one process
and one session per call) timed on a sample with the same parallelism and
scaled to the whole fleet. Bounded: every call has a hang guard and the fleet
is stopped on the way out.

    python bench/bmc_read_all.py [--count 1000] [--threads 16] [--sample 100]
                                 [--without-workarounds]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from powerq.bmc import close_all, driver_for, pyghmi_patches
from powerq.bmc.base import BmcError, BmcTarget
from powerq.bmc.simfleet.launcher import SimFleetProcess

CALL_GUARD_S = 60.0  # one ipmitool call; driver calls are bounded by pyghmi (~12 s worst)


@dataclass(frozen=True)
class Pass:
    """One timed sweep over a list of BMCs."""

    label: str
    wall: float
    latencies: list[float]
    failures: int

    def report(self, count: int) -> str:
        lat = sorted(self.latencies)
        p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"{self.label:<34} {self.wall:7.2f} s for {count} BMCs "
            f"({count / self.wall:7.1f}/s)  call p50 {p50 * 1e3:6.1f} ms  "
            f"p99 {p99 * 1e3:6.1f} ms  max {lat[-1] * 1e3:7.1f} ms  failures {self.failures}"
        )


def timed_pass(
    label: str, targets: Sequence[BmcTarget], threads: int, call: Callable[[BmcTarget], bool]
) -> Pass:
    """Run ``call`` on every target with ``threads`` workers; time the whole and each call."""

    def one(target: BmcTarget) -> tuple[float, bool]:
        start = time.monotonic()
        ok = call(target)
        return time.monotonic() - start, ok

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(one, targets))
    wall = time.monotonic() - start
    return Pass(label, wall, [r[0] for r in results], sum(1 for r in results if not r[1]))


def read_with_driver(target: BmcTarget) -> bool:
    """One power-state read through powerq's driver; False on a BMC error."""
    try:
        driver_for(target).get_power_state()
    except BmcError:
        return False
    return True


def read_with_ipmitool(target: BmcTarget) -> bool:
    """One ``ipmitool -C 3 chassis power status``; False unless it printed a state."""
    command = [
        "ipmitool",
        "-I",
        "lanplus",
        "-C",
        "3",
        "-H",
        target.address,
        "-p",
        str(target.port),
        "-U",
        target.username,
        "-P",
        target.password,
        "chassis",
        "power",
        "status",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=CALL_GUARD_S, check=False
    )
    return result.returncode == 0 and "Chassis Power is" in result.stdout


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the process exit status."""
    args = _parse(argv)
    if args.without_workarounds:  # comparison only: pyghmi as shipped (may stall or hang)
        pyghmi_patches.apply = lambda: None
    with SimFleetProcess(args.count, transition=1.0) as fleet:
        targets = fleet.targets()
        print(
            f"fleet of {args.count} BMCs up (ports {fleet.base_port}-"
            f"{fleet.base_port + args.count - 1}); {args.threads} threads; pyghmi "
            f"workarounds {'OFF' if args.without_workarounds else 'on'}",
            flush=True,
        )
        cold = timed_pass("driver, cold (login + read)", targets, args.threads, read_with_driver)
        warm = timed_pass("driver, warm (session reused)", targets, args.threads, read_with_driver)
        print(cold.report(args.count))
        print(warm.report(args.count))
        failures = cold.failures + warm.failures + _baseline(targets, args, cold, warm)
        close_all()
    return 1 if failures else 0


def _baseline(
    targets: Sequence[BmcTarget], args: argparse.Namespace, cold: Pass, warm: Pass
) -> int:
    """Time ipmitool on a sample, print it scaled to the fleet and the ratios; failures."""
    if shutil.which("ipmitool") is None:
        print("ipmitool not installed: no baseline")
        return 0
    sample = list(targets[: args.sample])
    alone = timed_pass("ipmitool -C 3, one at a time", sample[:20], 1, read_with_ipmitool)
    print(alone.report(len(sample[:20])))
    base = timed_pass(
        f"ipmitool -C 3, sample of {len(sample)}", sample, args.threads, read_with_ipmitool
    )
    print(base.report(len(sample)))
    scaled = base.wall * len(targets) / len(sample)
    print(
        f"ipmitool scaled to {len(targets)} BMCs: {scaled:.2f} s; driver is "
        f"{scaled / cold.wall:.1f}x faster cold, {scaled / warm.wall:.1f}x faster warm"
    )
    return alone.failures + base.failures


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument(
        "--without-workarounds",
        action="store_true",
        help="skip powerq's pyghmi workarounds (for comparison)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
