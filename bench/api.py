"""Benchmark 3: API accept rate of ``POST /v1/nodes/{name}/power`` at 64 concurrent clients.

gunicorn as shipped (``powerq up``: 2 workers, gthread, 8 threads each) serving
``powerq.api.wsgi:app``, against a minimal Flask app on the same gunicorn
settings that does one psycopg INSERT per call (``bench/minimal_app.py``).
Load: ``wrk`` (Debian package; 2 threads, 64 connections, keep-alive) with
``bench/post_power.lua``, each call a new ``on`` request for a different node
(30,000 registered nodes; no lane worker runs, so each stays pending and the
lane messages pile up in the private Redis). The two servers take turns,
``--rounds`` times ``--seconds`` each after a short warm-up; figures are the
medians of the rounds. Without wrk, a Python load generator is used (it needs
more CPU than wrk, on the same 2 cores: the figures are then lower).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import threading
import time
from typing import Any

from bench import common
from bench.common import Result, Row, median, percentile, say

CONNECTIONS = 64
NODES = 30_000
PREFIX = "api-"
LUA = common.BENCH_DIR / "post_power.lua"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench api``."""
    parser.add_argument("--seconds", type=int, default=10, help="per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (default 3)")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="default: wrk if installed",
    )


def register_fake_nodes(count: int) -> None:
    """``count`` IPMI nodes ``api-000000…`` (no BMC behind them: nothing executes here)."""
    manifest = [
        {
            "name": f"{PREFIX}{i:06d}",
            # One BMC per node (uq_nodes_bmc_endpoint); .invalid never resolves.
            "address": f"{PREFIX}{i:06d}.invalid",
            "port": 9,
            "username": "admin",
            "password": "password",
        }
        for i in range(count)
    ]
    common.register_nodes(manifest)


def run_wrk(
    url: str, seconds: int, connections: int, first: int, count: int, token: str
) -> dict[str, Any]:
    """One wrk run; its JSON summary (latencies in µs)."""
    argv = [
        "wrk",
        "-t",
        "2",
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        PREFIX,
        str(first),
        str(count),
        token,
        "2",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
            return data
    raise RuntimeError(f"wrk printed no summary: {out.stdout[-500:]} {out.stderr[-500:]}")


def run_python(
    url: str, seconds: int, connections: int, first: int, count: int, token: str
) -> dict[str, Any]:
    """A threaded keep-alive load generator with wrk's summary shape (fallback)."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = [0]
    counter = [first]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        while time.monotonic() < deadline:
            with lock:
                name = f"{PREFIX}{first + (counter[0] - first) % count:06d}"
                counter[0] += 1
            start = time.perf_counter()
            try:
                conn.request(
                    "POST",
                    f"/v1/nodes/{name}/power",
                    body=b'{"action":"on"}',
                    headers={
                        "Content-Type": "application/json",
                        "Authorization": f"Bearer {token}",
                    },
                )
                response = conn.getresponse()
                response.read()
                ok = response.status < 300
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                ok = False
            with lock:
                latencies.append(time.perf_counter() - start)
                errors[0] += 0 if ok else 1

    threads = [threading.Thread(target=client) for _ in range(connections)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    took = time.monotonic() - start
    us = [x * 1e6 for x in latencies]
    return {
        "requests": len(us),
        "duration_us": int(took * 1e6),
        "p50_us": percentile(us, 50),
        "p90_us": percentile(us, 90),
        "p99_us": percentile(us, 99),
        "max_us": max(us, default=0),
        "status_errors": errors[0],
        "connect_errors": 0,
        "read_errors": 0,
        "write_errors": 0,
        "timeouts": 0,
    }


def run(args: argparse.Namespace) -> Result:
    """Alternate rounds of load on powerq's API and on the minimal app."""
    import psycopg

    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
    load = run_wrk if loadgen == "wrk" else run_python
    result = Result(
        "api",
        {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "connections": args.connections,
            "loadgen": loadgen,
            "gunicorn": common.GUNICORN_AS_SHIPPED,
            "nodes": NODES,
        },
    )
    with common.bench_services(8, redis_url=args.redis_url) as services:
        register_fake_nodes(NODES)
        token = common.create_api_token("operator", "bench-api")
        with psycopg.connect(services.psycopg_url, autocommit=True) as conn:
            from bench.minimal_app import TABLE_DDL

            conn.execute(TABLE_DDL)
        group = services.processes
        servers = {
            "powerq": common.start_gunicorn(group, "api", "powerq.api.wsgi:app"),
            "minimal": common.start_gunicorn(
                group,
                "minimal",
                "bench.minimal_app:app",
                extra_env={
                    "BENCH_MINIMAL_DSN": services.psycopg_url,
                    "PYTHONPATH": str(common.REPO_DIR),
                },
            ),
        }
        runs: dict[str, list[dict[str, Any]]] = {"powerq": [], "minimal": []}
        per_round = NODES // (args.rounds + 1)
        for url in servers.values():  # warm-up: imports, pools, first connections
            load(url, 2, args.connections, 0, per_round, token)
        for i in range(args.rounds):
            for name, url in servers.items():
                first = (i + 1) * per_round
                tree = [
                    pid
                    for pid, _ in common.descendants(
                        group.children["api" if name == "powerq" else "minimal"].process.pid
                    )
                ]
                cpu0 = common.cpu_seconds(tree)
                data = load(url, args.seconds, args.connections, first, per_round, token)
                data["server_cpu_ms_per_request"] = (
                    (common.cpu_seconds(tree) - cpu0) * 1000 / max(1, data["requests"])
                )
                data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
                runs[name].append(data)
                say(
                    f"round {i + 1} {name}: {data['rps']:.0f} req/s, "
                    f"p50 {data['p50_us'] / 1000:.1f} ms, "
                    f"p99 {data['p99_us'] / 1000:.1f} ms, non-2xx {data['status_errors']}, "
                    f"server CPU {data['server_cpu_ms_per_request']:.1f} ms/request"
                )
        with psycopg.connect(services.psycopg_url) as conn:
            statuses = dict(
                conn.execute(
                    "SELECT status::text, count(*) FROM power_requests GROUP BY 1"
                ).fetchall()
            )
    result.details.update(runs=runs, powerq_requests_by_status=statuses)
    summary = {
        name: {
            "rps": median([r["rps"] for r in rs]),
            "p50_ms": median([r["p50_us"] / 1000 for r in rs]),
            "p99_ms": median([r["p99_us"] / 1000 for r in rs]),
            "errors": sum(r["status_errors"] + r["timeouts"] for r in rs),
            "server_cpu_ms_per_request": median([r["server_cpu_ms_per_request"] for r in rs]),
        }
        for name, rs in runs.items()
    }
    result.details["summary"] = summary
    pq, mini = summary["powerq"], summary["minimal"]
    note = f"{pq['errors']} non-2xx/timeouts" if pq["errors"] else ""
    result.add(
        Row(
            "3 API accept",
            "throughput",
            "req/s",
            ">= 1000 and >= 0.5x",
            "minimal Flask + 1 INSERT",
            mini["rps"],
            pq["rps"],
            pq["rps"] / mini["rps"],
            pq["rps"] >= 1000 and pq["rps"] >= 0.5 * mini["rps"],
            note,
        )
    )
    result.add(
        Row(
            "3 API accept",
            "gunicorn CPU per accepted request",
            "ms",
            "(info)",
            "minimal Flask + 1 INSERT",
            mini["server_cpu_ms_per_request"],
            pq["server_cpu_ms_per_request"],
            pq["server_cpu_ms_per_request"] / mini["server_cpu_ms_per_request"],
            None,
        )
    )
    result.add(
        Row(
            "3 API accept",
            "latency p99 at 64 clients",
            "ms",
            "<= 50 ms",
            "minimal Flask + 1 INSERT",
            mini["p99_ms"],
            pq["p99_ms"],
            pq["p99_ms"] / mini["p99_ms"],
            pq["p99_ms"] <= 50,
            f"p50 {pq['p50_ms']:.1f} ms vs {mini['p50_ms']:.1f} ms",
        )
    )
    return result


def main(args: argparse.Namespace) -> Result:
    """Run, print, write."""
    result = run(args)
    print(common.rows_table(result.rows))
    result.write()
    return result
