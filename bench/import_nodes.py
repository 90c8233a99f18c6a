"""Benchmark: importing a 6,000-row manifest (``POST /v1/nodes/import``).

Each round starts from an empty ``nodes`` table and imports ``--rows`` new
nodes (all ``created``), then imports the same manifest again with
``mode=update`` (all ``updated``: every row re-encrypts its password and
writes an event); ``--repeats`` rounds after a 10-row warm-up, medians.
Both go through the API as shipped (gunicorn, ``powerq up``'s settings) and
again in-process through Flask's test client (no HTTP, no gunicorn: what the
endpoint itself costs; its CPU seconds are recorded too, steadier than wall
time on a shared machine).

Baseline, in the same run and database: one plain ``INSERT … SELECT FROM
unnest(…)`` of the same rows (name, driver, BMC, one encrypted password) into a
scratch copy of ``nodes`` (its defaults and indexes), committed: the floor for
writing that many rows.
The goal is absolute (issue 15: an import of 6,000 rows in at most 3 s); the
ratio says how far above the floor the endpoint is.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from bench import common
from bench.common import Result, Row, median, say

GOAL_S = 3.0
PREFIX = "imp-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench import_nodes``."""
    parser.add_argument("--rows", type=int, default=6000, help="manifest rows (default 6000)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="imports per path and baseline runs (default 3)"
    )
    parser.add_argument(
        "--paths",
        default="api,inprocess",
        help="comma-separated: api (gunicorn), inprocess (Flask test client)",
    )


def manifest(rows: int) -> list[dict[str, Any]]:
    """``rows`` IPMI nodes ``imp-000000…``, one BMC each (``.invalid`` never resolves)."""
    return [
        {
            "name": f"{PREFIX}{i:06d}",
            "driver": "ipmi",
            "address": f"{PREFIX}{i:06d}.invalid",
            "port": 623,
            "username": "admin",
            "password": f"password-{i % 97}",
            "tags": ["bench", f"rack{i % 40}"],
        }
        for i in range(rows)
    ]


SCRATCH_DDL = "CREATE TABLE IF NOT EXISTS import_baseline (LIKE nodes INCLUDING ALL)"
BASELINE_INSERT = """
    INSERT INTO import_baseline (name, driver, bmc_address, bmc_port, bmc_username,
                                 bmc_password_encrypted, tags)
    SELECT r.name, r.driver::driver_kind, r.address, r.port, r.username, r.password,
           string_to_array(r.tags, ' ')
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::text[], %s::bytea[],
                %s::text[]) AS r(name, driver, address, port, username, password, tags)
"""


def baseline_insert(dsn: str, rows: list[dict[str, Any]], repeats: int) -> list[float]:
    """Seconds per plain unnest INSERT of ``rows`` (one shared encrypted password), committed."""
    import psycopg

    from powerq.secrets import encrypt_password

    secret = encrypt_password("password")
    columns = (
        [r["name"] for r in rows],
        [r["driver"] for r in rows],
        [r["address"] for r in rows],
        [r["port"] for r in rows],
        [r["username"] for r in rows],
        [secret] * len(rows),
        [" ".join(r["tags"]) for r in rows],
    )
    samples = []
    with psycopg.connect(dsn) as conn:
        conn.execute(SCRATCH_DDL)
        conn.commit()
        for _ in range(repeats):
            conn.execute("TRUNCATE import_baseline")
            conn.commit()
            start = time.perf_counter()
            conn.execute(BASELINE_INSERT, columns)
            conn.commit()
            samples.append(time.perf_counter() - start)
        conn.execute("DROP TABLE import_baseline")
        conn.commit()
    return samples


def clear_nodes(dsn: str) -> None:
    """Remove every node and event (a bench database: hard deletes are fine)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE power_events, power_requests, nodes CASCADE")


Poster = Callable[[bytes, str], dict[str, Any]]


def http_poster(base: str, token: str) -> Poster:
    """POST a manifest to the API at ``base``; the report."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(body: bytes, mode: str) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{base}/v1/nodes/import?mode={mode}",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            method="POST",
        )
        with opener.open(request, timeout=1800) as response:
            report: dict[str, Any] = json.loads(response.read())
        return report

    return post


def inprocess_poster(token: str) -> Poster:
    """POST a manifest through Flask's test client in this process; the report."""
    from powerq.api import create_app

    client = create_app().test_client()

    def post(body: bytes, mode: str) -> dict[str, Any]:
        response = client.post(
            f"/v1/nodes/import?mode={mode}",
            data=body,
            content_type="application/json",
            headers={"Authorization": f"Bearer {token}"},
        )
        if response.status_code != 200:
            raise RuntimeError(f"import answered {response.status_code}: {response.text[:300]}")
        report: dict[str, Any] = response.get_json()
        return report

    return post


def timed_import(
    post: Poster, body: bytes, mode: str, expect: str, rows: int
) -> tuple[float, float]:
    """Seconds one import took, and the CPU seconds this process spent on it (the
    whole import for the in-process path: steadier than wall time on a busy machine).

    :raises RuntimeError: not every row had the ``expect`` outcome.
    """
    start, cpu = time.perf_counter(), time.process_time()
    report = post(body, mode)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    if report["summary"].get(expect) != rows:
        raise RuntimeError(f"import {mode}: expected {rows} {expect}, got {report['summary']}")
    return took, cpu


def measure_path(post: Poster, dsn: str, rows: int, repeats: int) -> dict[str, Any]:
    """Create- then update-import of ``rows`` rows through ``post``, from empty,
    ``repeats`` times after a small warm-up import (first-request costs); medians."""
    post(json.dumps(manifest(10)).encode(), "skip")
    body = json.dumps(manifest(rows)).encode()
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        clear_nodes(dsn)
        for mode, expect in (("skip", "created"), ("update", "updated")):
            took, cpu = timed_import(post, body, mode, expect, rows)
            say(f"  {expect} {rows} in {took:.2f} s ({cpu:.2f} s CPU here)")
            samples.setdefault(f"{expect}_s", []).append(took)
            samples.setdefault(f"{expect}_cpu_s", []).append(cpu)
    clear_nodes(dsn)
    return {"samples": samples, **{key: median(values) for key, values in samples.items()}}


def _row(path: str, what: str, rows: int, base: float, value: float) -> Row:
    return Row(
        "import",
        f"import {rows:,} rows, {what}, {path}",
        "s",
        f"<= {GOAL_S:.0f} s",
        "unnest INSERT",
        base,
        value,
        value / base,
        value <= GOAL_S,
    )


def run(args: argparse.Namespace) -> Result:
    """Baseline, then each path: create-import and update-import from empty."""
    paths = [p for p in args.paths.split(",") if p]
    result = Result("import_nodes", {"rows": args.rows, "paths": paths})
    with common.bench_services(1, redis_url=args.redis_url) as services:
        dsn = services.psycopg_url
        base = median(baseline_insert(dsn, manifest(args.rows), args.repeats))
        say(f"baseline unnest INSERT of {args.rows} rows: {base * 1000:.0f} ms")
        token = common.create_api_token("admin", "bench-import")
        posters: dict[str, Callable[[], Poster]] = {
            "api": lambda: http_poster(
                common.start_gunicorn(services.processes, "api", "powerq.api.wsgi:app"), token
            ),
            "inprocess": lambda: inprocess_poster(token),
        }
        for path in paths:
            say(f"{path}:")
            figures = measure_path(posters[path](), dsn, args.rows, args.repeats)
            result.details[path] = figures
            result.add(_row(path, "all created", args.rows, base, figures["created_s"]))
            result.add(_row(path, "all updated", args.rows, base, figures["updated_s"]))
        result.details["baseline_s"] = base
        result.details["loadavg_after"] = os.getloadavg()
    return result
