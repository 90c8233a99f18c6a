"""Benchmark 1 on Redfish: batch power-off of the sim fleet's Redfish personality.

``python -m bench batch --protocol redfish --nodes 1000 --lanes 8``. The fleet is
``SimFleetProcess(protocol="redfish")``: one HTTPS port and one system per BMC,
a self-signed certificate that every node carries as its ``ca_bundle`` (TLS
verified, as against a real BMC with a private CA), the same 2 s transition.
Per lane count L, in the same run and on the same fleet:

* **curl, unverified**: ``xargs -P L -n 1 sh -c 'curl --cacert CA -u admin:password
  -d {"ResetType": "ForceOff"} URL'``: one process, one TLS connection and one
  POST per BMC (HTTP Basic, no session); done when every POST was answered (the
  machines are still transitioning). Without curl, a plain-Python ``requests``
  pool of L threads does the same POSTs.
* **powerq**: ``POST /v1/batches`` for every node and L lane workers as shipped,
  through powerq's Redfish driver (sushy session, GET of the system, one
  unretried POST, read back until ``Off``); timed to the last ``finished_at``.
  Every request must succeed, the fleet must end all off with zero overlaps.

The physical limit is ``transition + N * t_send / L`` with ``t_send`` the
median of one warm ``RedfishDriver.send_power_action`` (GET of the system,
then the POST), what powerq must at least do per node.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import batch, common
from bench.common import Result, Row, say

OFF_BODY = json.dumps({"ResetType": "ForceOff"})
RESET_SUFFIX = "/Actions/ComputerSystem.Reset"


def reset_url(row: dict[str, Any]) -> str:
    """The ComputerSystem.Reset target of one manifest entry."""
    return f"{row['scheme']}://{row['address']}:{row['port']}{row['system']}{RESET_SUFFIX}"


def curl_off(ca: Path) -> list[str]:
    """``sh -c 'curl … -d ForceOff "$1"' sh``: xargs appends the URL."""
    script = (
        f"exec timeout 30 curl -sS -o /dev/null --cacert {ca} -u admin:password "
        f"-H 'Content-Type: application/json' -d '{OFF_BODY}' \"$1\""
    )
    return ["sh", "-c", script, "sh"]


def single_command_times(fleet: Any, ca: Path) -> dict[str, float]:
    """Median of one warm driver send (GET + POST on a logged-in session), and of
    one curl call with its CPU (the machine is off: accepted, nothing happens)."""
    from powerq.bmc.redfish import RedfishDriver, RedfishSession, connect, disconnect
    from powerq.bmc.redfish_sessions import SessionCache
    from powerq.states import Action

    target = fleet.targets()[0]
    sessions: SessionCache[RedfishSession] = SessionCache(connect, disconnect)
    driver = RedfishDriver(target, sessions)
    driver.get_power_state()  # login
    samples = []
    for _ in range(50):
        start = time.perf_counter()
        driver.send_power_action(Action.OFF)
        samples.append(time.perf_counter() - start)
    sessions.close_all()
    url = reset_url(fleet.manifest[0])
    tool = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(10):
        start = time.perf_counter()
        subprocess.run([*curl_off(ca), url], capture_output=True, timeout=30, check=False)
        tool.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / len(tool)
    return {
        "driver_send_warm_s": statistics.median(samples),
        "curl_s": statistics.median(tool),
        "curl_cpu_s": cpu,
    }


def baseline_curl(group: Any, fleet: Any, lanes: int, urls: Path, ca: Path) -> dict[str, Any]:
    """xargs -P L curl … ForceOff: done when every POST was answered."""
    batch.power_all(fleet, "on")
    wall = batch.run_xargs(group, "xargs-curl-off", lanes, urls, curl_off(ca))
    summary = batch.wait_fleet_settled(fleet)
    return {"tool": "curl", "wall_s": wall, "fleet_after": summary}


def baseline_requests(fleet: Any, lanes: int, ca: Path) -> dict[str, Any]:
    """The same POSTs from a pool of L threads with plain ``requests`` (no curl here)."""
    import requests

    batch.power_all(fleet, "on")

    def post(row: dict[str, Any]) -> int:
        response = requests.post(
            reset_url(row),
            data=OFF_BODY,
            headers={"Content-Type": "application/json"},
            auth=(row["username"], row["password"]),
            verify=str(ca),
            timeout=30,
        )
        return response.status_code

    start = time.perf_counter()
    with ThreadPoolExecutor(lanes) as pool:
        codes = list(pool.map(post, fleet.manifest))
    wall = time.perf_counter() - start
    summary = batch.wait_fleet_settled(fleet)
    return {"tool": "requests", "wall_s": wall, "non_2xx": sum(c >= 300 for c in codes),
            "fleet_after": summary}  # fmt: skip


def run(args: argparse.Namespace) -> Result:
    """Benchmark 1 on the Redfish sim fleet at every lane count."""
    lane_counts = [int(x) for x in args.lanes.split(",")]
    output = args.output if args.output != "batch" else "batch-redfish"
    result = Result(
        output,
        {
            "protocol": "redfish",
            "nodes": args.nodes,
            "lanes": lane_counts,
            "transition_s": batch.TRANSITION_S,
            "submit": args.submit,
        },
    )
    with common.bench_services(max(lane_counts), redis_url=args.redis_url) as services:
        from powerq.tasks.app import app  # noqa: F401  (imported with the largest lane count)

        with common.sim_fleet(
            args.nodes, transition=batch.TRANSITION_S, protocol="redfish"
        ) as fleet:
            names = common.register_nodes(fleet.manifest)
            ca = services.data_dir / "fleet-ca.pem"
            ca.write_text(fleet.manifest[0]["ca_bundle"])
            urls = services.data_dir / "reset-urls.txt"
            urls.write_text("".join(f"{reset_url(row)}\n" for row in fleet.manifest))
            single = single_command_times(fleet, ca)
            result.details["single_command"] = single
            say(
                f"Redfish fleet of {args.nodes} up; warm driver send "
                f"{single['driver_send_warm_s'] * 1e3:.1f} ms, curl call "
                f"{single['curl_s'] * 1e3:.0f} ms ({single['curl_cpu_s'] * 1e3:.0f} ms CPU)"
            )
            for lanes in lane_counts:
                result.details[f"L{lanes}"] = one_lane_count(
                    args, services, fleet, names, urls, ca, lanes, single, result
                )
    return result


def one_lane_count(
    args: argparse.Namespace,
    services: common.Services,
    fleet: Any,
    names: list[str],
    urls: Path,
    ca: Path,
    lanes: int,
    single: dict[str, float],
    result: Result,
) -> dict[str, Any]:
    """The baseline and powerq at one lane count; adds its rows to ``result``."""
    n = len(names)
    detail: dict[str, Any] = {}
    if not args.no_baselines:
        if shutil.which("curl"):
            base = baseline_curl(services.processes, fleet, lanes, urls, ca)
        else:
            base = baseline_requests(fleet, lanes, ca)
        detail["unverified"] = base
        say(f"L={lanes} {base['tool']} unverified: {base['wall_s']:.1f} s, {base['fleet_after']}")
    use_api = args.submit == "api" or (args.submit == "auto" and batch.batches_available())
    pq = batch.run_powerq(services, fleet, names, lanes, args.profile, use_api)
    pq["submitted_with"] = "POST /v1/batches" if use_api else "per-node intents + dispatch"
    detail["powerq"] = pq
    ok = pq["requests"]["ok"] == n and pq["fleet_after"]["off"] == n
    ok = ok and pq["fleet_after"]["overlaps"] == 0
    say(
        f"L={lanes} powerq (redfish): {pq['wall_s']:.1f} s (submit {pq['submit_s']:.1f} s), "
        f"{pq['requests']['ok']}/{n} succeeded, fleet {pq['fleet_after']}, "
        f"machine busy {pq['machine_busy_fraction']:.0%}"
    )
    limit = batch.TRANSITION_S + n * single["driver_send_warm_s"] / lanes
    detail["physical_limit_s"] = limit
    note = "" if ok else f"NOT ALL VERIFIED: {pq['requests']['ok']}/{n}, fleet {pq['fleet_after']}"
    if "unverified" in detail:
        base_s = detail["unverified"]["wall_s"]
        tool = detail["unverified"]["tool"]
        result.add(
            Row("1 batch off (redfish)", f"N={n} L={lanes} wall", "s", "(info)",
                f"{tool} xargs, unverified", base_s, pq["wall_s"], pq["wall_s"] / base_s,
                None, note)
        )  # fmt: skip
    result.add(
        Row("1 batch off (redfish)", f"N={n} L={lanes} vs physical limit", "s", "(info)",
            "transition + N*t_send/L", limit, pq["wall_s"], pq["wall_s"] / limit, None, note)
    )  # fmt: skip
    cpu = pq["lane_worker_cpu_ms_per_node"]
    curl_cpu = single["curl_cpu_s"] * 1000
    result.add(
        Row("1 batch off (redfish)", f"N={n} L={lanes} lane worker CPU per node", "ms",
            "(info)", "one curl process", curl_cpu, cpu, cpu / curl_cpu, None,
            "lane workers only; PostgreSQL, Redis, fleet not counted")
    )  # fmt: skip
    detail["memory_summary"] = batch.lane_memory_summary(pq.pop("memory"))
    return detail
