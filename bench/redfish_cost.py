"""What sushy costs per call: the same GET of a Redfish system, four ways.

Against sushy-tools' emulator (``sushy-emulator``, fake driver, plain HTTP on
loopback, HTTP Basic credentials), ``--calls`` times each, interleaved in
rounds so drift hits all alike:

* ``requests``: a plain ``requests.Session`` (keep-alive), GET the system, parse JSON;
* ``requests, Connection: close``: the same with the header sushy sends on every
  request (a new TCP connection each time, as sushy does for BMCs that choke
  on long-lived connections);
* ``sushy connector``: the driver's session's sushy ``Connector.get`` and JSON;
* ``driver.get_power_state``: the whole driver call (session lease, sushy GET,
  JSON, mapping).

Run: ``.venv/bin/python -m bench.redfish_cost [--calls 300]``. Prints the
median wall time and client CPU time per call of each, and their ratio to
plain ``requests`` (the wall time is mostly the emulator's: it checks a bcrypt
password on every request; the CPU time is the client's alone).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

from powerq.bmc.base import BmcTarget
from powerq.bmc.redfish import RedfishDriver, http_sessions
from tests.redfish.emulator import PASSWORD, USERNAME, Emulator

ROUNDS = 5


def _timed(call: Callable[[], object], count: int) -> list[tuple[float, float]]:
    """(wall, client CPU) seconds of each call; CPU is this thread's only (the
    emulator's work is in its own process)."""
    samples = []
    for _ in range(count):
        wall, cpu = time.perf_counter(), time.thread_time()
        call()
        samples.append((time.perf_counter() - wall, time.thread_time() - cpu))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="GETs per way (default 300)")
    args = parser.parse_args()
    with Emulator(Path(tempfile.mkdtemp(prefix="redfish-cost-"))) as bmc:
        path = bmc.system_path("node-a")
        url = f"{bmc.url}{path}"
        keep = requests.Session()
        keep.auth = (USERNAME, PASSWORD)
        close = requests.Session()
        close.auth = (USERNAME, PASSWORD)
        close.headers["Connection"] = "close"
        sessions = http_sessions()
        target = BmcTarget("redfish", "127.0.0.1", bmc.port, USERNAME, PASSWORD)
        driver = RedfishDriver(target, sessions)
        driver.get_power_state()  # log in once, outside the measurement
        with sessions.lease(target) as lease:
            conn = lease.session.conn

        ways: dict[str, Callable[[], object]] = {
            "requests": lambda: keep.get(url, timeout=5).json(),
            "requests, Connection: close": lambda: close.get(url, timeout=5).json(),
            "sushy connector": lambda: conn.get(path).json(),
            "driver.get_power_state": driver.get_power_state,
        }
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        per_round = max(1, args.calls // ROUNDS)
        for call in ways.values():  # warm-up
            _timed(call, 10)
        for _ in range(ROUNDS):
            for name, call in ways.items():
                samples[name] += _timed(call, per_round)
        sessions.close_all()

    wall0 = statistics.median(w for w, _ in samples["requests"])
    cpu0 = statistics.median(c for _, c in samples["requests"])
    print(f"{per_round * ROUNDS} GETs each of {path} (sushy-emulator, loopback, HTTP)")
    print(f"  {'':<28} {'wall median':>12} {'ratio':>6} {'client CPU':>11} {'ratio':>6}")
    for name, values in samples.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(
            f"  {name:<28} {wall * 1000:9.2f} ms {wall / wall0:5.2f}x "
            f"{cpu * 1000:8.2f} ms {cpu / cpu0:5.2f}x"
        )


if __name__ == "__main__":
    main()
