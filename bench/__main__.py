"""``python -m bench all|NAME [options]``: NAME is one of :data:`BENCHMARKS`.

``all`` runs each benchmark in its own process, one after the other (each sets
its ``POWERQ_*`` environment before powerq's Celery app is imported), then
prints the combined table, writes ``bench/results/summary.json`` and rewrites
the figures table in BENCHMARKS.md. See BENCHMARKS.md for what each measures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import subprocess
import sys
import time
from typing import Any

from bench import common

BENCHMARKS = (
    "batch",
    "batch_create",
    "overhead",
    "api",
    "sweeper",
    "monitor",
    "memory",
    "dead_bmc",
    "recovery",
    "import_nodes",
    "cli_cost",
)
# Registered like the others but not run by `all`: minutes of their own, and their
# results file backs a document of its own (scaling: SCALING.md).
ON_THEIR_OWN = ("scaling",)
# What `all` runs by default: sized to finish in < 15 minutes on 2 cores (see BENCHMARKS.md).
ALL_DEFAULTS: dict[str, list[str]] = {
    "batch": ["--nodes", "1000", "--lanes", "8"],
    "batch_create": ["--nodes", "1000,10000"],
    "overhead": ["--repeats", "20"],
    "api": [],
    "sweeper": [],
    "monitor": [],
    "memory": ["--from-batch"],
    "dead_bmc": [],
    "recovery": [],
    "import_nodes": [],
    "cli_cost": [],
}
FULL_DEFAULTS: dict[str, list[str]] = {
    **ALL_DEFAULTS,
    "batch": ["--nodes", "1000", "--lanes", "4,8,16"],
}
BENCH_TIMEOUT_S = 1800


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="name", required=True)
    every = sub.add_parser("all", help="run every benchmark")
    every.add_argument(
        "--full",
        action="store_true",
        help="benchmark 1 at full size: 1,000 BMCs at L=4,8,16 with both baselines (~+10 min)",
    )
    every.add_argument("--only", help="comma-separated subset, e.g. api,sweeper")
    every.add_argument("--redis-url", help="use this Redis instead of a private redis-server")
    for name in (*BENCHMARKS, *ON_THEIR_OWN):
        p = sub.add_parser(name, help=f"benchmark {name}")
        p.add_argument("--redis-url", help="use this Redis instead of a private redis-server")
        importlib.import_module(f"bench.{name}").add_arguments(p)
    return top


def run_all(args: argparse.Namespace) -> int:
    """Every benchmark in a fresh process; the combined table; BENCHMARKS.md updated."""
    defaults = FULL_DEFAULTS if args.full else ALL_DEFAULTS
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    started = time.time()
    failed = []
    for name in names:
        argv = [sys.executable, "-m", "bench", name, *defaults[name]]
        if args.redis_url:
            argv += ["--redis-url", args.redis_url]
        common.say(f"=== {name}: {' '.join(argv[2:])}")
        t0 = time.time()
        code = run_bounded(argv)
        common.say(f"=== {name} finished in {time.time() - t0:.0f} s (exit {code})")
        if code != 0:
            failed.append(name)
    rows, runs = collect(names)
    summary = {
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "total_s": round(time.time() - started, 1),
        "failed": failed,
        "machine": common.machine_info(),
        "rows": rows,
        "runs": runs,
    }
    (common.RESULTS_DIR / "summary.json").write_text(
        json.dumps(summary, indent=2, default=str) + "\n"
    )
    print()
    print(common.rows_table([common.Row(**r) for r in rows]))
    print(f"\ntotal {summary['total_s']:.0f} s; failed: {failed or 'none'}")
    from bench import report

    report.update_benchmarks_md(summary)
    return 1 if failed else 0


def run_bounded(argv: list[str]) -> int:
    """Run one benchmark process; past BENCH_TIMEOUT_S interrupt it (SIGINT, so it stops
    what it started), and kill it a minute later if it is still there."""
    child = subprocess.Popen(argv)
    try:
        return child.wait(BENCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return -1


def collect(names: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of each benchmark's latest JSON, in order, and when/how each ran."""
    rows: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    for name in names:
        path = common.RESULTS_DIR / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        rows += data["rows"]
        runs[name] = {
            "started_at": data["started_at"],
            "duration_s": data.get("duration_s"),
            "params": data["params"],
        }
    return rows, runs


def _run_and_write(module: Any, args: argparse.Namespace) -> common.Result:
    """A benchmark without a ``main`` of its own: run, print its rows, write its JSON."""
    result: common.Result = module.run(args)
    print(common.rows_table(result.rows))
    result.write()
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    if args.name == "all":
        return run_all(args)
    module = importlib.import_module(f"bench.{args.name}")
    result = module.main(args) if hasattr(module, "main") else _run_and_write(module, args)
    bad = [r for r in result.rows if r.note.startswith("NOT")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
