"""Benchmark 1 (batch power-off/on of a simulated fleet) and 6 (lane worker memory after it).

For each lane count L, on the same fleet (transition 0.5 s, real IPMI on loopback):

* ``ipmipower`` (FreeIPMI, bench/ipmipower.py), one process, ``-F 64`` BMCs in
  flight: ``--off`` (unverified), ``--off --wait-until-off`` and ``--on
  --wait-until-on`` (verified); the baseline powerq's verified batches are
  compared with;
* ``ipmitool, unverified``: ``xargs -P L ipmitool -I lanplus -C 3 … chassis power off``,
  one process and one RMCP+ session per BMC; done when every command was accepted;
* ``ipmitool, verified``: ``xargs -P L sh bench/ipmi_off_verified.sh PORT``: send
  off, then poll status every 0.5 s until off;
* ``powerq``: L lane workers (``powerq worker --lane K``, as shipped), one off
  (then one on, see ``--actions``) request per node in one ``POST /v1/batches``
  (or through ``intents.request_power`` + ``dispatch_request``, see
  ``--submit``), timed from the submission to the last ``finished_at`` (every
  request verified by a BMC read).

Also the physical limit estimate ``transition + N * t_cmd / L`` with ``t_cmd``
the median round trip of one Chassis Control on a warm pyghmi session, and
the RSS/PSS of every lane worker process after each powerq run (benchmark 6).
Every machine is powered on (off before an ``on`` run; control API, not timed)
before each run; at the end the fleet must report every BMC in the target state.
After every ipmipower and powerq run the BMCs' own command logs say how many
power commands they executed (``executions_at_bmcs``): beyond one per node,
and overlapping an earlier command's transition.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import common
from bench import ipmipower as ipmipower_tool
from bench.common import Result, Row, say

TRANSITION_S = 2.0  # the Redfish variant's (bench/batch_redfish.py)
IPMI_TRANSITION_S = 0.5  # the IPMI fleet's default (--transition), as in issue 15
RUN_TIMEOUT_S = 600.0
VERIFIED_SCRIPT = common.BENCH_DIR / "ipmi_off_verified.sh"
VERIFIED_SAMPLE_PER_LANE = 5
IPMITOOL_HINT = "ipmitool is not installed: apt-get install -y ipmitool"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench batch``."""
    parser.add_argument("--nodes", type=int, default=1000, help="fleet size (default 1000)")
    parser.add_argument(
        "--lanes", default="4,8,16", help="comma-separated lane counts (default 4,8,16)"
    )
    parser.add_argument(
        "--protocol",
        choices=["ipmi", "redfish"],
        default="ipmi",
        help="the sim fleet's personality: ipmi (ipmitool baselines, default) or redfish "
        "(HTTPS, curl baseline; bench/batch_redfish.py; results file batch-redfish)",
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the ipmipower and ipmitool baselines"
    )
    parser.add_argument(
        "--transition",
        type=float,
        default=IPMI_TRANSITION_S,
        help=f"seconds a simulated power transition takes (IPMI; default {IPMI_TRANSITION_S})",
    )
    parser.add_argument(
        "--actions",
        default="off,on",
        help="powerq batches to run at each lane count, each against ipmipower's verified "
        "run of the same action (default off,on)",
    )
    parser.add_argument(
        "--fanout",
        type=int,
        default=ipmipower_tool.FANOUT,
        help=f"ipmipower -F (default {ipmipower_tool.FANOUT})",
    )
    parser.add_argument(
        "--output", default="batch", help="results file name under bench/results (default batch)"
    )
    parser.add_argument(
        "--submit",
        choices=["auto", "api", "intents"],
        default="auto",
        help="api: one POST /v1/batches through gunicorn (with the control worker and beat, "
        "as `powerq up` runs them); intents: one request per node through intents.request_power "
        "+ dispatch_request; auto: api when powerq.batches exists (default)",
    )
    parser.add_argument(
        "--whatif",
        action="store_true",
        help="also run powerq with the recommended fixes patched into the lane workers "
        "(bench/whatif_worker.py; evidence for BENCHMARKS.md, not a way to run powerq)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy every lane's Celery worker during the powerq runs",
    )


# --- the fleet ------------------------------------------------------------------------------


def power_all(fleet: Any, state: str) -> None:
    """Set every simulated machine to ``state`` at once (control API, not timed)."""
    control = fleet.control
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda row: control.set_power(row["name"], state), fleet.manifest))
    control.reset_logs()


def fleet_summary(fleet: Any) -> dict[str, Any]:
    """How many BMCs are off / on / still transitioning, and the overlap count."""
    bmcs = fleet.control.bmcs()
    return {
        "off": sum(1 for b in bmcs if b["power"] == "off" and not b["transitioning"]),
        "on": sum(1 for b in bmcs if b["power"] == "on"),
        "transitioning": sum(1 for b in bmcs if b["transitioning"]),
        "overlaps": fleet.control.overlaps()["total"],
    }


def wait_fleet_settled(fleet: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until no BMC is transitioning; return the summary."""
    summary: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal summary
        summary = fleet_summary(fleet)
        return summary["transitioning"] == 0

    common.wait_until(settled, timeout, "fleet transitions", poll=0.5)
    return summary


def executions_at_bmcs(fleet: Any) -> dict[str, int]:
    """What the BMCs executed since their logs were last reset, from their own logs.

    ``executions``: power-changing Chassis Controls accepted (completion code 0,
    ``powerq.bmc.simfleet.executions.executed``), whatever the client believes it
    sent; ``beyond_one_per_node``: executions past the first on each BMC (a batch
    asks each node for one); ``overlapping_a_transition``: commands that arrived
    while an earlier one was still in its transition (the fleet's overlap
    detector); ``retransmissions_not_run``: identical resends (same rqSeq) the
    BMC answered again without running them. Call it after the fleet settled.
    """
    from powerq.bmc.simfleet.executions import executed

    control = fleet.control
    names = [row["name"] for row in fleet.manifest]
    with ThreadPoolExecutor(8) as pool:
        logs = list(pool.map(control.log, names))
    per_node = [executed(log) for log in logs]
    return {
        "executions": sum(per_node),
        "beyond_one_per_node": sum(max(0, count - 1) for count in per_node),
        "nodes_beyond_one": sum(1 for count in per_node if count > 1),
        "nodes_without_execution": sum(1 for count in per_node if count == 0),
        "overlapping_a_transition": control.overlaps()["total"],
        "retransmissions_not_run": sum(
            1 for log in logs for entry in log if entry["command"] == "retransmission"
        ),
        "sessions_opened": sum(b["sessions_opened"] for b in control.bmcs()),
    }


# --- single-command time --------------------------------------------------------------------


def single_command_times(fleet: Any) -> dict[str, float]:
    """Median round trip of one warm pyghmi Chassis Control, and of one ipmitool call."""
    from powerq.bmc import close_all, driver_for
    from powerq.states import Action

    target = fleet.targets()[0]
    driver = driver_for(target)
    driver.get_power_state()  # login
    samples = []
    for _ in range(100):
        start = time.perf_counter()
        driver.send_power_action(Action.OFF)  # already off: accepted, nothing happens
        samples.append(time.perf_counter() - start)
    close_all()
    if shutil.which("ipmitool") is None:
        say(f"NO IPMITOOL BASELINES: {IPMITOOL_HINT}")
        nan = float("nan")
        return {
            "pyghmi_warm_s": statistics.median(samples),
            "ipmitool_s": nan,
            "ipmitool_cpu_s": nan,
        }
    tool = []
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(10):
        start = time.perf_counter()
        subprocess.run(
            _ipmitool(target.address, target.port, "chassis", "power", "off"),
            capture_output=True,
            timeout=30,
            check=False,
        )
        tool.append(time.perf_counter() - start)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    tool_cpu = (
        children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
    ) / len(tool)
    return {
        "pyghmi_warm_s": statistics.median(samples),
        "ipmitool_s": statistics.median(tool),
        "ipmitool_cpu_s": tool_cpu,
    }


def _ipmitool(address: str, port: int | str, *command: str) -> list[str]:
    return [
        "ipmitool",
        "-I",
        "lanplus",
        "-C",
        "3",
        "-H",
        address,
        "-p",
        str(port),
        "-U",
        "admin",
        "-P",
        "password",
        *command,
    ]


# --- baselines ------------------------------------------------------------------------------


def run_xargs(group: Any, name: str, lanes: int, ports: Path, command: list[str]) -> float:
    """``xargs -P lanes -n 1 COMMAND PORT`` over the ports file; return wall seconds.

    :raises TimeoutError: it did not finish within RUN_TIMEOUT_S (it is killed).
    """
    argv = ["xargs", "-a", str(ports), "-P", str(lanes), "-n", "1", *command]
    start = time.perf_counter()
    child = group.start(name, argv)
    try:
        child.process.wait(RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{name} did not finish in {RUN_TIMEOUT_S:.0f} s") from None
    finally:
        group.stop(name, timeout=5)
    return time.perf_counter() - start


def baseline_unverified(group: Any, fleet: Any, lanes: int, ports: Path) -> dict[str, Any]:
    """xargs -P L ipmitool … chassis power off: done when every command was accepted."""
    power_all(fleet, "on")
    wall = run_xargs(group, "xargs-off", lanes, ports, _port_last_ipmitool(fleet.address))
    summary = wait_fleet_settled(fleet)
    return {"wall_s": wall, "fleet_after": summary}


def _port_last_ipmitool(address: str) -> list[str]:
    """``sh -c 'ipmitool … -p "$1" chassis power off' sh PORT``: xargs appends the port."""
    script = (
        f'exec timeout 30 ipmitool -I lanplus -C 3 -H {address} -p "$1" '
        "-U admin -P password chassis power off >/dev/null"
    )
    return ["sh", "-c", script, "sh"]


def baseline_verified(group: Any, fleet: Any, lanes: int, ports: Path) -> dict[str, Any]:
    """xargs -P L of the send-then-poll shell loop, on a sample of VERIFIED_SAMPLE_PER_LANE
    BMCs per lane, scaled to the fleet.

    Each xargs slot works through its BMCs one after the other, each taking the
    transition plus polling (~2.6 s), so the wall time is linear in N/L: 1,000
    BMCs at L=4 would take ~11 minutes. A sample of 5 BMCs per slot measures the
    same per-BMC time; the JSON records both the sample and the scaled figure.
    """
    power_all(fleet, "on")
    all_ports = ports.read_text().split()
    sample = all_ports[: min(len(all_ports), VERIFIED_SAMPLE_PER_LANE * lanes)]
    sample_file = ports.with_name(f"ports-sample-{lanes}.txt")
    sample_file.write_text("".join(f"{p}\n" for p in sample))
    credentials = {
        "BENCH_BMC_HOST": fleet.address,
        "BENCH_BMC_USER": "admin",
        "BENCH_BMC_PASSWORD": "password",
    }
    os.environ.update(credentials)
    group.env.update(credentials)
    wall = run_xargs(group, "xargs-verified", lanes, sample_file, ["sh", str(VERIFIED_SCRIPT)])
    summary = wait_fleet_settled(fleet)
    scale = len(all_ports) / len(sample)
    return {
        "wall_s": wall * scale,
        "sample": len(sample),
        "sample_wall_s": wall,
        "fleet_after": summary,
        "sample_verified_off": summary["off"],
    }


def ipmipower_baselines(
    group: Any, fleet: Any, lanes: int, fanout: int
) -> dict[str, dict[str, Any]]:
    """Every ipmipower variant once over the whole fleet (bench/ipmipower.py), each from
    the opposite state; timed, its CPU, and what the BMCs executed."""
    out: dict[str, dict[str, Any]] = {}
    for variant in ipmipower_tool.VARIANTS:
        power_all(fleet, variant.start_state)
        name = f"ipmipower-{variant.name}-L{lanes}"
        busy0, total0 = system_cpu()
        run = ipmipower_tool.run(group, name, fleet.manifest, variant, fanout)
        busy1, total1 = system_cpu()
        run["machine_cpu_s"] = (busy1 - busy0) / os.sysconf("SC_CLK_TCK")
        run["machine_busy_fraction"] = (busy1 - busy0) / max(1, total1 - total0)
        run["fleet_after"] = wait_fleet_settled(fleet)
        run["at_bmcs"] = executions_at_bmcs(fleet)
        run["all_done"] = (
            run["exit_code"] == 0
            and run["hosts_ok"] == len(fleet.manifest)
            and run["fleet_after"][variant.target_state] == len(fleet.manifest)
        )
        at = run["at_bmcs"]
        say(
            f"L={lanes} ipmipower {' '.join(variant.flags)} -F {fanout}: {run['wall_s']:.2f} s, "
            f"CPU {run['cpu_s']:.2f} s, exit {run['exit_code']}, {run['outcomes']}, "
            f"executions {at['executions']} ({at['beyond_one_per_node']} beyond one per node, "
            f"{at['overlapping_a_transition']} overlapping)"
        )
        out[variant.name] = run
    return out


# --- powerq ---------------------------------------------------------------------------------


def batches_available() -> bool:
    """Whether the batch API (powerq.batches, POST /v1/batches) has landed."""
    import importlib.util

    return importlib.util.find_spec("powerq.batches") is not None


def submit_per_node(names: list[str], actor: str, action: str = "off") -> float:
    """One request per node, exactly as ``POST /v1/nodes/{name}/power`` records it."""
    from powerq.db import session_scope
    from powerq.intents import find_node, request_power
    from powerq.states import Action
    from powerq.tasks.dispatch import dispatch_request

    start = time.perf_counter()
    for name in names:
        with session_scope() as session:
            node = find_node(session, name)
            intent = request_power(session, node, Action(action), actor=actor)
            request_id, created = intent.request.id, intent.created
        if created:
            dispatch_request(request_id, name)
    return time.perf_counter() - start


def start_api_stack(
    group: Any, lanes: int, whatif: bool = False, action: str = "off"
) -> dict[str, str]:
    """gunicorn (as shipped), the control worker and beat, all at ``lanes`` lanes.

    The monitor is pushed out of the run (POWERQ_MONITOR_INTERVAL_S=3600) so
    that no refresh competes with the batch; the sweeper runs as configured.
    """
    env = {"POWERQ_LANES": str(lanes), "POWERQ_MONITOR_INTERVAL_S": "3600"}
    if whatif:
        common.start_control_and_beat(group, {**env, "POWERQ_REDISPATCH_AFTER_S": "300"})
        env["POWERQ_REDISPATCH_AFTER_S"] = "300"
    else:
        common.start_control_and_beat(group, env)
    url = common.start_gunicorn(group, "api", "powerq.api.wsgi:app", extra_env=env)
    actor = _actor(lanes, action, whatif)
    return {"url": url, "token": common.create_api_token("operator", actor), "actor": actor}


def _actor(lanes: int, action: str, whatif: bool = False) -> str:
    """Who the run's requests are from (each run counts only its own requests)."""
    return (
        f"bench-batch-L{lanes}"
        + ("" if action == "off" else f"-{action}")
        + ("-whatif" if whatif else "")
    )


def submit_batch_api(api: dict[str, str], names: list[str], action: str = "off") -> float:
    """One ``POST /v1/batches`` naming every node; return its latency.

    :raises RuntimeError: the API did not answer 201.
    """
    import requests

    start = time.perf_counter()
    response = requests.post(
        api["url"] + "/v1/batches",
        json={"action": action, "nodes": names, "name": f"bench-{action}"},
        headers={"Authorization": f"Bearer {api['token']}"},
        timeout=300,
    )
    elapsed = time.perf_counter() - start
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/batches: {response.status_code} {response.text[:500]}")
    return elapsed


def progress(actor: str) -> dict[str, Any]:
    """Counts and times of the run's requests (one query)."""
    from sqlalchemy import text

    from powerq.db import session_scope

    with session_scope() as session:
        row = (
            session.execute(
                text(
                    "SELECT count(*) AS total,"
                    " count(*) FILTER (WHERE status IN ('succeeded','failed','cancelled')) AS done,"
                    " count(*) FILTER (WHERE status = 'succeeded') AS ok,"
                    " extract(epoch FROM max(finished_at)) AS last_finished,"
                    " extract(epoch FROM min(created_at)) AS first_created,"
                    " percentile_cont(0.5) WITHIN GROUP (ORDER BY"
                    "  extract(epoch FROM finished_at - created_at)) AS p50,"
                    " percentile_cont(0.99) WITHIN GROUP (ORDER BY"
                    "  extract(epoch FROM finished_at - created_at)) AS p99,"
                    " sum(checks) AS checks, sum(attempt) AS attempts,"
                    " sum(dispatch_count) AS dispatches"
                    " FROM power_requests WHERE requested_by = :actor"
                ),
                {"actor": actor},
            )
            .mappings()
            .one()
        )
    return {
        k: (float(v) if v is not None and k not in ("total", "done", "ok") else v)
        for k, v in row.items()
    }


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_powerq(
    services: common.Services,
    fleet: Any,
    names: list[str],
    lanes: int,
    profile: bool,
    use_api: bool,
    whatif: bool = False,
    action: str = "off",
) -> dict[str, Any]:
    """One powerq batch power-``action`` at ``lanes`` lanes, every machine in the opposite
    state first; returns timings, checks, memory and what the BMCs executed."""
    common.set_lanes(lanes)
    common.flush_broker()
    group = services.processes
    api = start_api_stack(group, lanes, whatif, action) if use_api else None
    workers = common.LaneWorkers(group, lanes, whatif)
    startup = workers.start()
    power_all(fleet, "off" if action == "on" else "on")
    actor = api["actor"] if api else _actor(lanes, action, whatif)
    spies = _start_profilers(services, workers) if profile else []
    trees = workers.pids()
    pids = [pid for tree in trees.values() for pid, _ in tree]
    by_role = {
        d: [pid for tree in trees.values() for pid, depth in tree if depth == d]
        for d in workers.roles
    }
    role_cpu0 = {d: common.cpu_seconds(p) for d, p in by_role.items()}
    cpu0, (busy0, total0) = common.cpu_seconds(pids), system_cpu()
    parties0 = common.cpu_by_party()
    t0 = time.time()
    submit_s = (
        submit_batch_api(api, names, action) if api else submit_per_node(names, actor, action)
    )
    state: dict[str, Any] = {}

    def finished() -> bool:
        nonlocal state
        state = progress(actor)
        return bool(state["done"] == len(names))

    common.wait_until(finished, RUN_TIMEOUT_S, f"powerq batch at L={lanes}", poll=0.2)
    cpu1, (busy1, total1) = common.cpu_seconds(pids), system_cpu()
    parties = common.cpu_delta_by_party(parties0, common.cpu_by_party())
    role_cpu = {workers.roles[d]: common.cpu_seconds(p) - role_cpu0[d] for d, p in by_role.items()}
    wall = state["last_finished"] - t0
    for spy in spies:
        spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
        spy.wait(30)
    memory = workers.memory()
    summary = wait_fleet_settled(fleet)
    at_bmcs = executions_at_bmcs(fleet)
    workers.stop()
    for name in ("beat", "control", "api"):
        group.stop(name, timeout=10)
    return {
        "wall_s": wall,
        "submit_s": submit_s,
        "worker_startup_s": startup,
        "requests": state,
        "lane_worker_cpu_s": cpu1 - cpu0,
        "lane_worker_cpu_s_by_role": role_cpu,
        "lane_worker_cpu_ms_per_node": (cpu1 - cpu0) * 1000 / len(names),
        "machine_busy_fraction": (busy1 - busy0) / max(1, total1 - total0),
        "machine_cpu_s": (busy1 - busy0) / os.sysconf("SC_CLK_TCK"),
        "cpu_s_by_party": parties,
        "fleet_after": summary,
        "at_bmcs": at_bmcs,
        "memory": memory,
    }


def _start_profilers(services: common.Services, workers: common.LaneWorkers) -> list[Any]:
    if shutil.which("py-spy") is None:
        say("py-spy not installed (pip install py-spy): not profiling")
        return []
    out = []
    for lane, tree in workers.pids().items():
        # the process that runs the steps: the deepest of the lane's tree
        children = [pid for pid, depth in sorted(tree, key=lambda node: -node[1])]
        if not children:
            continue
        path = common.RESULTS_DIR / f"profile-batch-lane{lane}-of-{workers.lanes}.txt"
        out.append(
            subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(children[0]),
                    "--duration",
                    "60",
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(path),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return out


# --- the benchmark --------------------------------------------------------------------------


def lane_memory_summary(memory: list[dict[str, Any]]) -> dict[str, float]:
    """Largest RSS/PSS per role across lanes, and the largest whole-lane PSS."""
    out: dict[str, float] = {}
    for entry in memory:
        for key in ("rss_mib", "pss_mib"):
            name = f"{entry['role']} {key}"
            out[name] = max(out.get(name, 0.0), entry.get(key, 0.0))
    per_lane: dict[int, float] = {}
    for entry in memory:
        per_lane[entry["lane"]] = per_lane.get(entry["lane"], 0.0) + entry.get("pss_mib", 0.0)
    out["whole lane pss_mib"] = max(per_lane.values()) if per_lane else 0.0
    return out


def run(args: argparse.Namespace) -> Result:
    """Benchmark 1 at every lane count, plus the memory figures of benchmark 6."""
    if getattr(args, "protocol", "ipmi") == "redfish":
        from bench import batch_redfish

        return batch_redfish.run(args)

    lane_counts = [int(x) for x in args.lanes.split(",")]
    result = Result(
        getattr(args, "output", "batch"),
        {
            "nodes": args.nodes,
            "lanes": lane_counts,
            "transition_s": args.transition,
            "actions": _actions(args),
            "ipmipower_fanout": args.fanout,
            "submit": args.submit,
            "batches_available": batches_available(),
        },
    )
    with common.bench_services(max(lane_counts), redis_url=args.redis_url) as services:
        from powerq.tasks.app import app  # noqa: F401  (imported with the largest lane count)

        with common.sim_fleet(args.nodes, transition=args.transition) as fleet:
            names = common.register_nodes(fleet.manifest)
            ports = services.data_dir / "ports.txt"
            ports.write_text("".join(f"{row['port']}\n" for row in fleet.manifest))
            single = single_command_times(fleet)
            result.details["single_command"] = single
            say(
                f"fleet of {args.nodes} up; warm pyghmi command "
                f"{single['pyghmi_warm_s'] * 1e3:.2f} ms,"
                f" ipmitool call {single['ipmitool_s'] * 1e3:.0f} ms"
            )
            for lanes in lane_counts:
                result.details[f"L{lanes}"] = one_lane_count(
                    args, services, fleet, names, ports, lanes, single, result
                )
    return result


def one_lane_count(
    args: argparse.Namespace,
    services: common.Services,
    fleet: Any,
    names: list[str],
    ports: Path,
    lanes: int,
    single: dict[str, float],
    result: Result,
) -> dict[str, Any]:
    """Baselines and powerq at one lane count; adds its rows to ``result``."""
    n = len(names)
    detail: dict[str, Any] = {}
    if not args.no_baselines and shutil.which("ipmitool"):
        detail["unverified"] = baseline_unverified(services.processes, fleet, lanes, ports)
        say(f"L={lanes} ipmitool unverified: {detail['unverified']['wall_s']:.1f} s")
        detail["verified"] = baseline_verified(services.processes, fleet, lanes, ports)
        say(f"L={lanes} ipmitool verified: {detail['verified']['wall_s']:.1f} s")
    if not args.no_baselines:
        detail["ipmipower"] = ipmipower_or_hint(services.processes, fleet, lanes, args.fanout)
    use_api = args.submit == "api" or (args.submit == "auto" and batches_available())
    pq = run_powerq(services, fleet, names, lanes, args.profile, use_api)
    pq["submitted_with"] = "POST /v1/batches" if use_api else "per-node intents + dispatch"
    detail["powerq"] = pq
    ok = pq["requests"]["ok"] == n and pq["fleet_after"]["off"] == n
    say(
        f"L={lanes} powerq: {pq['wall_s']:.1f} s (submit {pq['submit_s']:.1f} s), "
        f"{pq['requests']['ok']}/{n} succeeded, fleet {pq['fleet_after']}, "
        f"machine busy {pq['machine_busy_fraction']:.0%}, CPU s by party {pq['cpu_s_by_party']}"
    )
    limit = args.transition + n * single["pyghmi_warm_s"] / lanes
    detail["physical_limit_s"] = limit
    note = "" if ok else f"NOT ALL VERIFIED: {pq['requests']['ok']}/{n}, fleet {pq['fleet_after']}"
    if "unverified" in detail:
        base = detail["unverified"]["wall_s"]
        result.add(
            Row(
                "1 batch off",
                f"N={n} L={lanes} wall",
                "s",
                "<= 1.0x",
                "ipmitool xargs, unverified",
                base,
                pq["wall_s"],
                pq["wall_s"] / base,
                ok and pq["wall_s"] <= base,
                note,
            )
        )
        verified = detail["verified"]["wall_s"]
        result.add(
            Row(
                "1 batch off",
                f"N={n} L={lanes} wall vs verified loop",
                "s",
                "(info)",
                "ipmitool verified, sample scaled",
                verified,
                pq["wall_s"],
                pq["wall_s"] / verified,
                None,
                note,
            )
        )
    result.add(
        Row(
            "1 batch off",
            f"N={n} L={lanes} vs physical limit",
            "s",
            "<= 1.5x",
            "transition + N*t_cmd/L",
            limit,
            pq["wall_s"],
            pq["wall_s"] / limit,
            ok and pq["wall_s"] <= 1.5 * limit,
            note,
        )
    )
    cpu = pq["lane_worker_cpu_ms_per_node"]
    result.add(
        Row(
            "1 batch off",
            f"N={n} L={lanes} lane worker CPU per node",
            "ms",
            "(info)",
            "one ipmitool process",
            single["ipmitool_cpu_s"] * 1000,
            cpu,
            cpu / (single["ipmitool_cpu_s"] * 1000),
            None,
            "lane workers only; PostgreSQL, Redis, fleet not counted"
            + ("" if shutil.which("ipmitool") else f"; {IPMITOOL_HINT}"),
        )
    )
    ipmipower_rows(result, n, lanes, "off", pq, ok, note, detail.get("ipmipower"), args.fanout)
    if "on" in _actions(args):
        pq_on = run_powerq(services, fleet, names, lanes, False, use_api, action="on")
        pq_on.pop("memory")
        pq_on["submitted_with"] = pq["submitted_with"]
        detail["powerq_on"] = pq_on
        ok_on = pq_on["requests"]["ok"] == n and pq_on["fleet_after"]["on"] == n
        say(
            f"L={lanes} powerq on: {pq_on['wall_s']:.1f} s (submit {pq_on['submit_s']:.1f} s), "
            f"{pq_on['requests']['ok']}/{n} succeeded, fleet {pq_on['fleet_after']}, "
            f"at the BMCs {pq_on['at_bmcs']}"
        )
        note_on = (
            ""
            if ok_on
            else f"NOT ALL VERIFIED: {pq_on['requests']['ok']}/{n}, fleet {pq_on['fleet_after']}"
        )
        ipmipower_rows(
            result, n, lanes, "on", pq_on, ok_on, note_on, detail.get("ipmipower"), args.fanout
        )
    detail["memory_summary"] = lane_memory_summary(pq["memory"])
    if getattr(args, "whatif", False):
        detail["whatif"] = whatif_rows(services, fleet, names, lanes, use_api, detail, result)
    return detail


def _actions(args: argparse.Namespace) -> list[str]:
    """The powerq batches to run (``--actions``): off always, on when asked."""
    actions = [a.strip() for a in getattr(args, "actions", "off").split(",") if a.strip()]
    unknown = set(actions) - {"off", "on"}
    if unknown or "off" not in actions:
        raise SystemExit(f"--actions: off, or off,on (got {actions})")
    return ["off", *(["on"] if "on" in actions else [])]


def ipmipower_or_hint(group: Any, fleet: Any, lanes: int, fanout: int) -> dict[str, Any]:
    """The ipmipower runs, or, when it is not installed, a loud line and a record of it."""
    if ipmipower_tool.binary() is None:
        say(f"NO IPMIPOWER BASELINE: {ipmipower_tool.INSTALL_HINT}")
        return {"missing": ipmipower_tool.INSTALL_HINT}
    return ipmipower_baselines(group, fleet, lanes, fanout)


def ipmipower_rows(
    result: Result,
    n: int,
    lanes: int,
    action: str,
    pq: dict[str, Any],
    ok: bool,
    note: str,
    runs: dict[str, Any] | None,
    fanout: int,
) -> None:
    """powerq's batch ``action`` against ipmipower's runs in the same lane count's turn:
    wall and CPU ratios, and duplicate executions counted at the BMCs."""
    if runs is None:  # --no-baselines
        return
    bench = f"1 batch {action}"
    metric = f"N={n} L={lanes}"
    if "missing" in runs:
        result.add(
            Row(bench, f"{metric} wall vs ipmipower, verified", "s", "<= 1.0x",
                "ipmipower (not installed)", None, pq["wall_s"], None, None,
                f"NOT MEASURED: {runs['missing']}")
        )  # fmt: skip
        return
    verified = runs[f"{action}_wait"]
    label = f"ipmipower --{action} --wait-until-{action} -F {fanout}"
    at, base_at = pq["at_bmcs"], verified["at_bmcs"]
    clean = at["beyond_one_per_node"] == 0 and at["overlapping_a_transition"] == 0
    incomplete = [
        f"{name} {run['outcomes']} exit {run['exit_code']} fleet {run['fleet_after']}"
        for name, run in runs.items()
        if not run["all_done"] and name in (f"{action}_wait", action)
    ]
    base_note = f"NOT A FULL BASELINE: ipmipower did not finish: {incomplete}" if incomplete else ""
    wall_note = "; ".join(x for x in (note, base_note) if x)
    ratio = pq["wall_s"] / verified["wall_s"]
    result.add(
        Row(bench, f"{metric} wall vs ipmipower, verified", "s", "<= 1.0x", label,
            verified["wall_s"], pq["wall_s"], ratio, ok and clean and ratio <= 1.0, wall_note)
    )  # fmt: skip
    if action in runs:
        unverified = runs[action]
        result.add(
            Row(bench, f"{metric} wall vs ipmipower, unverified", "s", "(info)",
                f"ipmipower --{action} -F {fanout}", unverified["wall_s"], pq["wall_s"],
                pq["wall_s"] / unverified["wall_s"], None, wall_note)
        )  # fmt: skip
    result.add(
        Row(bench, f"{metric} CPU vs ipmipower, verified", "s", "(info)", label,
            verified["cpu_s"], pq["lane_worker_cpu_s"],
            pq["lane_worker_cpu_s"] / max(verified["cpu_s"], 1e-3), None,
            "powerq: lane workers only (not API, PostgreSQL, Redis); ipmipower: its process")
    )  # fmt: skip
    result.add(
        Row(bench, f"{metric} duplicate executions at the BMCs", "commands", "0", label,
            base_at["beyond_one_per_node"], at["beyond_one_per_node"], None, ok and clean,
            f"beyond one per node; overlapping a transition: ipmipower "
            f"{base_at['overlapping_a_transition']}, powerq {at['overlapping_a_transition']}")
    )  # fmt: skip


def whatif_rows(
    services: common.Services,
    fleet: Any,
    names: list[str],
    lanes: int,
    use_api: bool,
    detail: dict[str, Any],
    result: Result,
) -> dict[str, Any]:
    """powerq again with bench/whatif_worker.py's fixes; rows comparing both runs."""
    n = len(names)
    wi = run_powerq(services, fleet, names, lanes, False, use_api, whatif=True)
    ok = wi["requests"]["ok"] == n and wi["fleet_after"]["off"] == n
    say(
        f"L={lanes} powerq what-if: {wi['wall_s']:.1f} s, {wi['requests']['ok']}/{n} succeeded, "
        f"lane CPU {wi['lane_worker_cpu_ms_per_node']:.1f} ms/node"
    )
    note = "" if ok else f"NOT ALL VERIFIED: {wi['requests']['ok']}/{n}"
    pq = detail["powerq"]
    if "unverified" in detail:
        base = detail["unverified"]["wall_s"]
        result.add(
            Row("1 batch (what-if)", f"N={n} L={lanes} wall", "s", "(info)",
                "ipmitool xargs, unverified", base, wi["wall_s"], wi["wall_s"] / base, None, note)
        )  # fmt: skip
    result.add(
        Row("1 batch (what-if)", f"N={n} L={lanes} lane worker CPU per node", "ms", "(info)",
            "powerq as shipped, same run", pq["lane_worker_cpu_ms_per_node"],
            wi["lane_worker_cpu_ms_per_node"],
            wi["lane_worker_cpu_ms_per_node"] / pq["lane_worker_cpu_ms_per_node"], None,
            f"wall {pq['wall_s']:.0f} s -> {wi['wall_s']:.0f} s; dispatches "
            f"{pq['requests']['dispatches']:.0f} -> {wi['requests']['dispatches']:.0f}")
    )  # fmt: skip
    wi["memory_summary"] = lane_memory_summary(wi.pop("memory"))
    return wi


def main(args: argparse.Namespace) -> Result:
    """Run, print the table, write the JSON."""
    result = run(args)
    print(common.rows_table(result.rows))
    for key, detail in result.details.items():
        if key.startswith("L"):
            print(f"{key} lane worker memory (largest per role, MiB): {detail['memory_summary']}")
    result.write()
    return result
