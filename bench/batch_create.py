"""Batch creation: ``create_batch`` and ``POST /v1/batches`` for 1,000 and 10,000 nodes.

For each size N (``--nodes 1000,10000``), N nodes are inserted directly (bulk
INSERT, no BMC behind them), then, ``--repeats`` times each, interleaved:

* baseline: one plain ``INSERT … SELECT FROM unnest(node ids, positions)`` of
  the same N rows into a scratch copy of ``power_requests`` (same columns and
  defaults, no index, no constraint): what writing N rows costs here at all;
* ``create_batch`` in-process, in one transaction (committed), as the API calls it;
* ``POST /v1/batches`` through Flask's test client (in-process: token check,
  creation, the answer with the first page of results; no HTTP server).

Between runs every outstanding request is marked finished, so each batch
creates N requests again. Times are database time (the sum of the statements'
execution, measured around the cursor) and wall time; figures are medians and
ratios against the baseline's database time in the same run. The statement
count of each way is printed too (it must not grow with N).

Run: ``python -m bench batch_create [--nodes 1000,10000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench import common
from bench.common import Result, Row, median, say

# The goals (wall time of a batch's creation).
GOALS_MS = {1000: 500.0, 10_000: 3000.0}
PREFIX = "bc-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench batch_create``."""
    parser.add_argument("--nodes", default="1000,10000", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3)


def register(count: int) -> list[int]:
    """Nodes ``bc-000000…`` up to ``count`` (those missing); return their ids in name order."""
    from sqlalchemy import select

    from powerq.db import session_scope
    from powerq.models import Node

    first = count_nodes()
    manifest = [
        {"name": f"{PREFIX}{i:06d}", "address": f"{PREFIX}{i:06d}.invalid", "port": 9,
         "username": "admin", "password": "password"}
        for i in range(first, count)
    ]  # fmt: skip
    if manifest:
        common.register_nodes(manifest)
    with session_scope() as session:
        ids = session.scalars(
            select(Node.id).where(Node.name.like(f"{PREFIX}%")).order_by(Node.name).limit(count)
        )
        return list(ids)


def count_nodes() -> int:
    """How many benchmark nodes exist."""
    from sqlalchemy import func, select

    from powerq.db import session_scope
    from powerq.models import Node

    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(Node.name.like(f"{PREFIX}%"))) or 0)


class Clock:
    """Database time and statement count of what runs through the engine."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.statements = 0
        self._started: list[float] = []

    def before(self, *args: Any) -> None:
        """``before_cursor_execute``."""
        self._started.append(time.perf_counter())

    def after(self, *args: Any) -> None:
        """``after_cursor_execute``."""
        self.seconds += time.perf_counter() - self._started.pop()
        self.statements += 1


@contextmanager
def clocked() -> Iterator[Clock]:
    """A :class:`Clock` listening on the engine while in the block."""
    from sqlalchemy import event

    from powerq.db import get_engine

    clock, engine = Clock(), get_engine()
    event.listen(engine, "before_cursor_execute", clock.before)
    event.listen(engine, "after_cursor_execute", clock.after)
    try:
        yield clock
    finally:
        event.remove(engine, "before_cursor_execute", clock.before)
        event.remove(engine, "after_cursor_execute", clock.after)


def finish_outstanding() -> None:
    """Mark every outstanding request succeeded (frees the nodes for the next batch)."""
    from sqlalchemy import text

    from powerq.db import session_scope

    with session_scope() as session:
        session.execute(
            text(
                "UPDATE power_requests SET status = 'succeeded', finished_at = now(), held = false"
                " WHERE status IN ('pending', 'running')"
            )
        )
        session.execute(text("TRUNCATE scratch_requests"))


def make_scratch() -> None:
    """``scratch_requests``: the columns and defaults of power_requests, nothing else."""
    from sqlalchemy import text

    from powerq.db import session_scope

    with session_scope() as session:
        session.execute(
            text(
                "CREATE TABLE IF NOT EXISTS scratch_requests "
                "(LIKE power_requests INCLUDING DEFAULTS, position integer)"
            )
        )


def baseline(ids: list[int]) -> Callable[[], None]:
    """A plain INSERT … SELECT FROM unnest of the same rows a batch inserts."""
    from sqlalchemy import text

    from powerq.db import session_scope

    statement = text(
        "INSERT INTO scratch_requests"
        " (node_id, position, action, status, deadline_s, requested_by, held, start_by)"
        " SELECT node_id, position, 'off', 'pending', 120, 'bench', true, now()"
        " FROM unnest(CAST(:ids AS integer[]), CAST(:positions AS integer[]))"
        " AS g(node_id, position) RETURNING id"
    )

    def run() -> None:
        with session_scope() as session:
            session.execute(statement, {"ids": ids, "positions": list(range(len(ids)))}).all()

    return run


def in_process(count: int) -> Callable[[], None]:
    """``create_batch`` of the first ``count`` nodes, committed."""
    from powerq.batches import BatchSpec, create_batch
    from powerq.db import session_scope
    from powerq.states import Action

    names = tuple(f"{PREFIX}{i:06d}" for i in range(count))
    spec = BatchSpec(action=Action.OFF, nodes=names)

    def run() -> None:
        with session_scope() as session:
            create_batch(session, spec, actor="bench")

    return run


def through_api(count: int, client: Any, token: str) -> Callable[[], None]:
    """``POST /v1/batches`` of the first ``count`` nodes (Flask test client)."""
    body = {"action": "off", "nodes": [f"{PREFIX}{i:06d}" for i in range(count)]}
    headers = {"Authorization": f"Bearer {token}"}

    def run() -> None:
        response = client.post("/v1/batches", json=body, headers=headers)
        if response.status_code != 201:
            raise RuntimeError(f"POST /v1/batches: {response.status_code} {response.get_json()}")

    return run


def measure(run: Callable[[], None]) -> tuple[float, float, int]:
    """Database seconds, wall seconds and statements of one run (then free the nodes)."""
    with clocked() as clock:
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    finish_outstanding()
    return clock.seconds, wall, clock.statements


def size_rows(count: int, samples: dict[str, list[tuple[float, float, int]]]) -> list[Row]:
    """The figures rows of one batch size."""
    base_db = median([s[0] for s in samples["baseline"]]) * 1000
    rows = []
    for way, label in (("create_batch", "create_batch"), ("api", "POST /v1/batches")):
        db = median([s[0] for s in samples[way]]) * 1000
        wall = median([s[1] for s in samples[way]]) * 1000
        statements = sorted({s[2] for s in samples[way]})
        goal = GOALS_MS.get(count)
        rows.append(
            Row(
                benchmark="batch_create",
                metric=f"{label}, {count:,} nodes, database time",
                unit="ms",
                goal=f"wall <= {goal:.0f} ms" if goal else "",
                baseline_label="INSERT…unnest",
                baseline=base_db,
                powerq=db,
                ratio=db / base_db if base_db else None,
                met=wall <= goal if goal else None,
                note=f"wall {wall:.0f} ms, {statements} statements",
            )
        )
    return rows


def run(args: argparse.Namespace) -> Result:
    """Every size, every way, interleaved ``--repeats`` times."""
    sizes = [int(n) for n in str(args.nodes).split(",")]
    result = Result("batch_create", {"nodes": sizes, "repeats": args.repeats})
    with common.bench_services(1, redis_url=args.redis_url):
        from powerq import create_app

        make_scratch()
        client = create_app().test_client()
        token = common.create_api_token("operator")
        for count in sizes:
            say(f"registering {count} nodes")
            ids = register(count)
            ways = {
                "baseline": baseline(ids),
                "create_batch": in_process(count),
                "api": through_api(count, client, token),
            }
            samples: dict[str, list[tuple[float, float, int]]] = {way: [] for way in ways}
            for repeat in range(args.repeats):
                for way, call in ways.items():
                    samples[way].append(measure(call))
                last = ", ".join(f"{w} {s[-1][0] * 1000:.0f} ms" for w, s in samples.items())
                say(f"{count} nodes, run {repeat + 1}: {last} (database time)")
            result.details[str(count)] = samples
            for row in size_rows(count, samples):
                result.add(row)
    return result
