"""The profiles behind BENCHMARKS.md's "What limits the figures": counts and CPU profiles.

    python -m bench.profiles executor   # one request's steps, in process, no Celery
    python -m bench.profiles api        # 1,000 POST /v1/nodes/{name}/power via the test client
    python -m bench.profiles batch      # batches.create_batch for 1,000 nodes (pyinstrument)

Each runs on its own throwaway database and private Redis (bench.common) and
prints statement counts per unit of work, Redis commands, CPU per unit, and a
profile (cProfile with a CPU clock; pyinstrument for ``batch`` if installed).
"""

from __future__ import annotations

import collections
import cProfile
import io
import pstats
import sys
import time
from typing import Any

from bench import common

NODES = 100
POSTS = 1000
BATCH = 1000


def _count_statements(engine: Any) -> collections.Counter[str]:
    """Count statements by their first words, and BEGIN/COMMIT/pre-ping round trips."""
    from sqlalchemy import event

    counts: collections.Counter[str] = collections.Counter()

    def statement(conn: Any, cursor: Any, text: str, params: Any, ctx: Any, many: bool) -> None:
        words = text.split()
        counts["SAVEPOINT" if words[0] == "SAVEPOINT" else " ".join(words[:2])] += 1

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "begin", lambda conn: counts.update(["(BEGIN)"]))
    event.listen(engine, "commit", lambda conn: counts.update(["(COMMIT)"]))
    ping = engine.dialect.do_ping

    def counted_ping(dbapi_connection: Any) -> Any:
        counts["(pre-ping)"] += 1
        return ping(dbapi_connection)

    engine.dialect.do_ping = counted_ping
    return counts


def _print_counts(counts: collections.Counter[str], per: int, unit: str) -> None:
    total = sum(counts.values())
    print(f"PostgreSQL round trips per {unit}: {total / per:.1f}")
    for key, value in counts.most_common(15):
        print(f"  {value / per:6.2f}  {key}")


def _redis_counts(url: str, per: int, unit: str) -> None:
    import redis

    stats = redis.Redis.from_url(url).info("commandstats")
    calls = {k.removeprefix("cmdstat_"): v["calls"] / per for k, v in stats.items()}
    print(f"Redis commands per {unit}: " + ", ".join(f"{k} {v:.2f}" for k, v in calls.items()))


def _reset_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).config_resetstat()


def _print_profile(profile: cProfile.Profile, lines: int = 45) -> None:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(lines)
    print(out.getvalue())


def _run_steps(ids: list[Any], profile: cProfile.Profile | None) -> float:
    """Claim, query, send; wait; claim, check, finish. CPU seconds spent in the steps."""
    from powerq.tasks import steps

    cpu = 0.0
    for round_ in range(2):
        if round_:
            time.sleep(1.0)  # the transition (0.3 s) and the first check's delay (0.5 s)
        start = time.process_time()
        if profile:
            profile.enable()
        for request_id in ids:
            steps.run_request(request_id)
        if profile:
            profile.disable()
        cpu += time.process_time() - start
    return cpu


def executor(services: common.Services) -> None:
    """Query, send and one verifying check of NODES off requests, run in this process."""
    from powerq.bmc.simfleet.launcher import SimFleetProcess
    from powerq.db import get_engine, session_scope
    from powerq.intents import find_node, request_power
    from powerq.states import Action
    from powerq.tasks.dispatch import dispatch_request

    with SimFleetProcess(NODES, transition=0.3) as fleet:
        names = common.register_nodes(fleet.manifest)
        for row in fleet.manifest:
            fleet.control.set_power(row["name"], "on")
        ids = []
        for name in names:
            with session_scope() as session:
                intent = request_power(session, find_node(session, name), Action.OFF, actor="p")
                ids.append(intent.request.id)
            dispatch_request(ids[-1], name)
        counts = _count_statements(get_engine())
        _reset_redis(services.broker_url)
        half = len(ids) // 2
        cpu = _run_steps(ids[:half], None)  # timed without the profiler's own cost
        profile = cProfile.Profile(time.process_time)
        _run_steps(ids[half:], profile)
    print(f"CPU per node (query + send + check, no Celery): {cpu * 1000 / half:.1f} ms")
    _print_counts(counts, NODES, "node")
    _redis_counts(services.broker_url, NODES, "node")
    _print_profile(profile)


def api(services: common.Services) -> None:
    """POSTS power requests through Flask's test client, profiled with a CPU clock."""
    from bench.api import register_fake_nodes
    from powerq.api import create_app
    from powerq.db import get_engine

    register_fake_nodes(POSTS + 100)
    headers = {"Authorization": f"Bearer {common.create_api_token('operator', 'profile')}"}
    client = create_app().test_client()
    for i in range(50):  # warm: imports, pools, statement caches
        client.post(f"/v1/nodes/api-{i:06d}/power", json={"action": "on"}, headers=headers)
    counts = _count_statements(get_engine())
    _reset_redis(services.broker_url)
    profile = cProfile.Profile(time.process_time)
    cpu = 0.0
    for i in range(100, 100 + POSTS):
        profiled = i >= 100 + POSTS // 2  # the first half is timed without the profiler
        start = time.process_time()
        if profiled:
            profile.enable()
        response = client.post(
            f"/v1/nodes/api-{i:06d}/power", json={"action": "on"}, headers=headers
        )
        if profiled:
            profile.disable()
        else:
            cpu += time.process_time() - start
        assert response.status_code == 202, response.data
    print(f"CPU per POST (test client, no profiler): {cpu * 1000 / (POSTS // 2):.1f} ms")
    _print_counts(counts, POSTS, "POST")
    _redis_counts(services.broker_url, POSTS, "POST")
    _print_profile(profile)


def _pyinstrument() -> Any:
    """A pyinstrument profiler, or None when it is not installed."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return None
    return Profiler(interval=0.001)


def batch(services: common.Services) -> None:
    """batches.create_batch for BATCH nodes in one transaction."""
    from bench.api import register_fake_nodes
    from powerq.batches import BatchSpec, create_batch
    from powerq.db import get_engine, session_scope
    from powerq.states import Action

    register_fake_nodes(BATCH)
    names = tuple(f"api-{i:06d}" for i in range(BATCH))
    spec = BatchSpec(
        action=Action.OFF, nodes=names, selector=None, stagger_s=0.0, max_in_flight=None,
        name="profile", deadline_s=None,
    )  # fmt: skip
    counts = _count_statements(get_engine())
    profiler = _pyinstrument()
    if profiler:
        profiler.start()
    start, cpu = time.perf_counter(), time.process_time()
    with session_scope() as session:
        create_batch(session, spec, actor="profile")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"create_batch of {BATCH} nodes: {wall:.2f} s wall, {cpu:.2f} s CPU")
    _print_counts(counts, BATCH, "node")
    if profiler:
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False))


def main(argv: list[str]) -> int:
    """Entry point."""
    kinds = {"executor": executor, "api": api, "batch": batch}
    if len(argv) != 1 or argv[0] not in kinds:
        print(__doc__)
        return 2
    with common.bench_services(1) as services:
        from powerq.tasks.app import app  # noqa: F401  (after the environment is set)

        kinds[argv[0]](services)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
