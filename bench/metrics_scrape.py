"""What one ``GET /metrics`` scrape costs: time and statements, against ``GET /healthz``.

``python -m bench.metrics_scrape [--nodes 10000] [--requests 50000] [--repeats 30]``

A throwaway database (:func:`bench.common.bench_services`) gets ``--nodes``
nodes and ``--requests`` requests in a few set-based INSERTs: 1,000 (at most
one per node) outstanding (pending, held, running), the rest finished over the
last 30 days (90 % succeeded, 7 % failed with the executor's error texts, 3 %
cancelled), every node read recently, 1 % in maintenance, 1 % in power_fault.
Then, through the Flask test client in this process (no network, one thread),
``GET /metrics`` (reader token, warmed cache) and ``GET /healthz`` are timed
alternately ``--repeats`` times each; the medians and their ratio are printed,
with the statements one scrape sends and each statement's plan
(``EXPLAIN (ANALYZE, BUFFERS)``). Absolute times depend on the machine; the
ratio against /healthz (one ``SELECT 1`` and a broker PING) is the figure to
compare.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import bench_services, median, say

OUTSTANDING = 1000

_NODES = """
INSERT INTO nodes (name, driver, bmc_address, bmc_port, bmc_username, bmc_password_encrypted,
                   power_state, power_state_at, desired_power_state, maintenance, power_fault)
SELECT 'm-' || g, 'ipmi', 'm-' || g || '.invalid', 623, 'admin', '\\x00'::bytea,
       CASE WHEN g % 2 = 0 THEN 'on' ELSE 'off' END::power_state,
       now() - (g % 60) * interval '1 s',
       CASE WHEN g % 50 = 0 THEN 'on' WHEN g % 2 = 0 THEN 'on' ELSE 'off' END::desired_power_state,
       g % 100 = 1, g % 100 = 2
FROM generate_series(1, {nodes}) g
"""

_FINISHED = """
INSERT INTO power_requests (node_id, action, status, deadline_s, requested_by, created_at,
                            started_at, finished_at, error, dispatch_count)
SELECT n.id,
       (ARRAY['on', 'off', 'cycle', 'reset', 'soft_off', 'query'])[1 + g % 6]::power_action,
       CASE WHEN g % 100 < 90 THEN 'succeeded' WHEN g % 100 < 97 THEN 'failed'
            ELSE 'cancelled' END::request_status,
       60, 'bench', t.created,
       CASE WHEN g % 100 < 97 THEN t.created + (g % 7) * interval '50 ms' END,
       t.created + (1 + g % 13) * interval '700 ms',
       CASE WHEN g % 100 BETWEEN 90 AND 96 THEN
            (ARRAY['BMC unreachable after 5 attempts: no answer',
                   'on failed: IPMI login at x as user ''admin'': credentials refused',
                   'off not verified within 120s: the BMC still reports on (wanted off)',
                   'on failed: refused with 0xd5 (not supported in present state)'])[1 + g % 4]
       END,
       1 + (g % 40 = 0)::int
FROM generate_series(1, {finished}) g
JOIN nodes n ON n.id = 1 + g % {nodes}
CROSS JOIN LATERAL (SELECT now() - (g % 2592000) * interval '1 s' AS created) t
"""

_OUTSTANDING = """
INSERT INTO power_requests (node_id, action, status, held, deadline_s, requested_by, started_at)
SELECT id, 'off', CASE WHEN id % 3 = 0 THEN 'running' ELSE 'pending' END::request_status,
       id % 3 = 1, 60, 'bench', CASE WHEN id % 3 = 0 THEN now() END
FROM nodes WHERE id <= {outstanding}
"""


def fill(psycopg_url: str, nodes: int, requests: int) -> None:
    """The rows, set-based, then ANALYZE (as autovacuum would, soon after)."""
    import psycopg

    outstanding = min(OUTSTANDING, nodes, requests)
    params = {"nodes": nodes, "finished": requests - outstanding, "outstanding": outstanding}
    with psycopg.connect(psycopg_url, autocommit=True) as conn:
        for statement in (_NODES, _FINISHED, _OUTSTANDING):
            conn.execute(statement.format(**params).encode())  # integers only: no parameters
        conn.execute("ANALYZE")


def timed(call: Any, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def explain(statements: list[str], parameters: list[Any]) -> None:
    """Print each statement's plan, run (read-only statements)."""
    from sqlalchemy import text

    from powerq.db import get_engine

    with get_engine().connect() as conn:
        for statement, params in zip(statements, parameters, strict=True):
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", params)
            say("\n".join(row[0] for row in plan))
            say("")
        conn.execute(text("SELECT 1"))


def run(args: argparse.Namespace) -> None:
    """Fill, time, count, explain; print the figures."""
    with bench_services(lanes=8) as services:
        fill(services.psycopg_url, args.nodes, args.requests)
        from sqlalchemy import event

        from powerq.api import create_app
        from powerq.db import get_engine, session_scope
        from powerq.tokens import create_token

        with session_scope() as session:
            _, token = create_token(session, role="reader", name="prometheus")
        client = create_app().test_client()
        headers = {"Authorization": f"Bearer {token}"}

        def scrape() -> None:
            assert client.get("/metrics", headers=headers).status_code == 200

        def health() -> None:
            assert client.get("/healthz").status_code == 200

        scrape(), health()  # warm: token cache, pool, broker connection
        seen: list[tuple[str, Any]] = []

        def note(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            seen.append((statement, params))

        event.listen(get_engine(), "before_cursor_execute", note)
        scrape()
        event.remove(get_engine(), "before_cursor_execute", note)
        scrapes, healths = [], []
        for _ in range(args.repeats):
            scrapes += timed(scrape, 1)
            healths += timed(health, 1)
        explain([s for s, _ in seen], [p for _, p in seen])
        say(f"nodes {args.nodes}, requests {args.requests}, repeats {args.repeats}")
        say(f"statements per scrape: {len(seen)}")
        say(f"GET /metrics median {median(scrapes) * 1000:.1f} ms")
        say(f"GET /healthz median {median(healths) * 1000:.1f} ms")
        say(f"ratio /metrics : /healthz = {median(scrapes) / median(healths):.1f}")


def main() -> None:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=30)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
