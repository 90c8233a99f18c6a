"""Benchmark 11 (capacity model): 1, 2 and 3 ``powerq agent`` processes sharing one set of lanes.

For each agent count A (``--agents``, default 1,2,3), on the same fleet of
simulated IPMI BMCs (``--nodes``, transition 0.5 s) and the same
``POWERQ_LANES`` (``--lanes``, default 12):

* first, one unmeasured batch per action (the executor learns each node's
  transition window from its first actions, and every agent count should
  find it learned);
* A agents are started as shipped (``python -m powerq.cli agent --lanes auto
  --name aK``); the run waits until every lane's lease is held by the agent
  rendezvous hashing gives it to and every lane worker answers a ping;
* an idle window (``--idle`` seconds, no request): what the agents, the
  control worker and beat cost PostgreSQL and Redis doing nothing, and the
  lane-lease heartbeats (rows of ``agents`` and ``lane_leases`` updated);
* one verified batch per action (``--actions``, default off then on) of every
  node, made as ``POST /v1/batches`` makes it (``create_batch`` in one
  transaction, ``dispatch_releases`` after commit; in the bench process, so no
  gunicorn holds connections and CPU), with the control worker and beat as
  ``powerq up`` runs them (shared by every A), timed from the submission to the
  last ``finished_at``; actions/s overall, per lane and per agent (from the lane of
  each request and the agent that held that lane); PostgreSQL transactions and
  rows written per action (``pg_stat_database`` and ``pg_stat_user_tables``
  deltas of the bench database; raw, and net of the idle window's rate);
  Redis commands per action (``INFO commandstats`` of the private
  redis-server); CPU per action by party (agents and their lane workers,
  this database's PostgreSQL backends, Redis, the fleet, API, control);
* what the BMCs executed, from their own logs: exactly one power command per
  node and no command overlapping a transition, or the run FAILS (rows marked
  NOT, exit code 1).

After the last agent count, one monitor refresh of every node (the beat task
body called once, as beat calls it) is measured the same way: transactions,
rows and Redis commands per node read; then this host's ceilings under the
same load (``pgbench -b simple-update``, ``redis-benchmark``). Every figure is
also given as a ratio to the first agent count of the same run. Bounded (every
wait times out), stops by itself, and every process it starts is stopped by
process group.

Two other modes: ``--model RESULTS_JSON`` prints SCALING.md's sizing table
(measured costs times the rates a fleet needs, under the MODEL_* assumptions);
``--monitor-mark SIZES`` times the monitor's marking of due nodes in the
database alone, at fleet sizes no simulated fleet here reaches.

Run: ``python -m bench scaling --nodes 2000 --lanes 12 --agents 1,2,3``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from bench import common
from bench.batch import (
    executions_at_bmcs,
    power_all,
    progress,
    system_cpu,
    wait_fleet_settled,
)
from bench.common import Result, Row, say

TRANSITION_S = 0.5
RUN_TIMEOUT_S = 600.0
READY_TIMEOUT_S = 180.0
# PostgreSQL 15 backends report their counters when idle, at most once a
# second, and an idle backend with counters pending reports them within 10 s:
# a snapshot taken this long after the work has all of it.
STATS_FLUSH_S = 11.0
POLL_S = 0.5
# Commands the bench itself sends to Redis (its snapshots), not counted.
OWN_REDIS_COMMANDS = ("info", "config", "client", "hello", "select", "ping")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench scaling``."""
    parser.add_argument("--nodes", type=int, default=2000, help="fleet size (default 2000)")
    parser.add_argument(
        "--lanes", type=int, default=12, help="POWERQ_LANES of every agent (default 12)"
    )
    parser.add_argument(
        "--agents", default="1,2,3", help="comma-separated agent counts (default 1,2,3)"
    )
    parser.add_argument(
        "--transition",
        type=float,
        default=TRANSITION_S,
        help=f"seconds a simulated power transition takes (default {TRANSITION_S})",
    )
    parser.add_argument(
        "--actions", default="off,on", help="batches per agent count, in order (default off,on)"
    )
    parser.add_argument(
        "--idle", type=float, default=20.0, help="seconds of the idle window (default 20)"
    )
    parser.add_argument(
        "--no-monitor", action="store_true", help="skip the monitor refresh at the end"
    )
    parser.add_argument(
        "--db-pool",
        default="2,1",
        help="POWERQ_DB_POOL_SIZE,POWERQ_DB_MAX_OVERFLOW of the agents (default 2,1: 12 lanes "
        "as shipped, 3+3, could hold 72 of a shared server's 100 connections; 'shipped': "
        "leave them as configured)",
    )
    parser.add_argument(
        "--model",
        metavar="RESULTS_JSON",
        help="instead: print SCALING.md's sizing table from a results file "
        "(e.g. bench/results/scaling.json)",
    )
    parser.add_argument(
        "--monitor-mark",
        metavar="SIZES",
        help="instead: time the monitor's marking of due nodes (database only, no BMC) at "
        "these fleet sizes, e.g. 10000,100000,200000 (results file NAME-monitor-mark)",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the unmeasured batches (one per action) before the first agent count",
    )
    parser.add_argument(
        "--no-ceilings",
        action="store_true",
        help="skip pgbench and redis-benchmark (this host's ceilings) at the end",
    )
    parser.add_argument(
        "--output", default="scaling", help="results file under bench/results (default scaling)"
    )


# --- counters -------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """PostgreSQL, Redis and CPU counters at one moment."""

    at: float
    pg: dict[str, int]
    tables: dict[str, dict[str, int]]
    redis: dict[str, int]
    cpu: dict[int, tuple[str, float]] = field(default_factory=dict)
    busy: tuple[float, float] = (0.0, 0.0)


_DB_COUNTERS = (
    "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted"
    " FROM pg_stat_database WHERE datname = current_database()"
)
_TABLE_COUNTERS = (
    "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd FROM pg_stat_user_tables"
)


def snapshot(services: common.Services, database: str) -> Snapshot:
    """The counters now (one PostgreSQL transaction of the bench's own, subtracted later)."""
    import redis

    conn = _stats_connection(services.psycopg_url)
    with conn.transaction():
        row = conn.execute(_DB_COUNTERS).fetchone()
        tables = {
            name: {"ins": ins, "upd": upd, "del": dele, "hot_upd": hot}
            for name, ins, upd, dele, hot in conn.execute(_TABLE_COUNTERS).fetchall()
        }
    conn.execute("SELECT pg_stat_clear_snapshot()")  # the next read sees fresh counters
    assert row is not None
    pg = dict(zip(("commit", "rollback", "ins", "upd", "del"), map(int, row), strict=True))
    client = redis.Redis.from_url(services.broker_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    commands = {
        key.removeprefix("cmdstat_"): int(value["calls"])
        for key, value in stats.items()
        if key.removeprefix("cmdstat_").split("|")[0] not in OWN_REDIS_COMMANDS
    }
    return Snapshot(time.time(), pg, tables, commands, cpu_by_party(database), system_cpu())


_STATS: dict[str, Any] = {}


def _stats_connection(url: str) -> Any:
    """One connection for every snapshot, opened once and kept: the shared server is
    sometimes full ("too many clients") for a minute while other engineers' tests run."""
    conn = _STATS.get(url)
    if conn is None or conn.closed:
        conn = _connect(url)
        conn.autocommit = True
        _STATS[url] = conn
    return conn


def _connect(url: str) -> Any:
    """A psycopg connection; the shared server may be full for a moment (other engineers'
    tests use it too): up to 30 tries, a second apart.

    :raises psycopg.OperationalError: still refused after the last try.
    """
    import psycopg

    for attempt in range(30):
        try:
            return psycopg.connect(url)
        except psycopg.OperationalError:
            if attempt == 29:
                raise
            say("PostgreSQL refused a connection (too many clients?); trying again")
            time.sleep(1)
    raise AssertionError("unreachable")


def connections() -> int:
    """Connections open to the bench database now (pg_stat_activity; one transaction on
    the bench process's pooled connection)."""
    from sqlalchemy import text

    from powerq.db import session_scope

    with session_scope() as session:
        count = session.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        ).scalar_one()
    return int(count)


def submit_batch(names: list[str], action: str, actor: str) -> float:
    """One batch of ``action`` on every node, exactly as ``POST /v1/batches`` makes it
    (``create_batch`` in one transaction, then ``dispatch_releases`` after commit), in
    this process: no gunicorn holding connections and CPU. Returns seconds taken."""
    from powerq.batches import BatchSpec, create_batch
    from powerq.db import session_scope
    from powerq.states import Action
    from powerq.tasks.batch_pump import dispatch_releases

    start = time.perf_counter()
    with session_scope() as session:
        created = create_batch(
            session, BatchSpec(Action(action), nodes=tuple(names), name=actor), actor=actor
        )
        releases = created.releases
    dispatch_releases(releases)
    return time.perf_counter() - start


def cpu_by_party(database: str) -> dict[int, tuple[str, float]]:
    """:func:`common.cpu_by_party`, with the backends of ``database`` told apart from the
    rest of the shared PostgreSQL server (other engineers' tests use it too), and the
    agents (whose command line says ``agent``) with their forked lane workers."""
    import psutil

    parties = common.cpu_by_party()
    for pid, (party, cpu) in list(parties.items()):
        try:
            line = " ".join(psutil.Process(pid).cmdline())
        except (psutil.Error, OSError):
            continue
        if party == "postgres" and database in line:
            parties[pid] = ("postgres (bench db)", cpu)
        elif party == "postgres":
            parties[pid] = ("postgres (other)", cpu)
        elif "powerq.cli agent" in line or party == "lanes":
            parties[pid] = ("agents", cpu)  # an agent, or a lane worker it forked
    return parties


def deltas(before: Snapshot, after: Snapshot, own_transactions: int) -> dict[str, Any]:
    """What happened between two snapshots: transactions, rows (by table), Redis commands.

    ``own_transactions``: transactions the bench itself ran in between (its
    progress polls, the first snapshot), not counted.
    """
    pg = {key: after.pg[key] - before.pg[key] for key in after.pg}
    tables = {}
    for name, counts in after.tables.items():
        start = before.tables.get(name, {k: 0 for k in counts})
        changed = {k: counts[k] - start[k] for k in counts}
        if any(changed.values()):
            tables[name] = changed
    commands = {
        name: calls - before.redis.get(name, 0)
        for name, calls in after.redis.items()
        if calls - before.redis.get(name, 0)
    }
    return {
        "seconds": after.at - before.at,
        "transactions": pg["commit"] + pg["rollback"] - own_transactions,
        "rollbacks": pg["rollback"],
        "rows_written": pg["ins"] + pg["upd"] + pg["del"],
        "rows": {"inserted": pg["ins"], "updated": pg["upd"], "deleted": pg["del"]},
        "rows_by_table": dict(sorted(tables.items(), key=lambda item: -sum(item[1].values()))),
        "redis_commands": sum(commands.values()),
        "redis_by_command": dict(sorted(commands.items(), key=lambda item: -item[1])),
    }


def rates(window: dict[str, Any]) -> dict[str, float]:
    """Per-second rates of an idle window's deltas."""
    seconds = window["seconds"]
    return {
        "transactions": window["transactions"] / seconds,
        "rows_written": window["rows_written"] / seconds,
        "redis_commands": window["redis_commands"] / seconds,
    }


def net(window: dict[str, Any], background: dict[str, float]) -> dict[str, float]:
    """A window's totals less what the idle rate accounts for over its length."""
    seconds = window["seconds"]
    return {key: window[key] - background[key] * seconds for key in background}


# --- agents ---------------------------------------------------------------------------------


def agent_names(count: int) -> list[str]:
    """a1 … aN."""
    return [f"a{k}" for k in range(1, count + 1)]


def start_agents(group: Any, names: list[str], lanes: int, pool: str = "shipped") -> float:
    """Start the agents; wait until every lane is held by its rendezvous owner and every
    lane worker answers a ping. Returns the seconds taken.

    :raises TimeoutError: not settled within READY_TIMEOUT_S.
    :raises RuntimeError: an agent died.
    """
    from powerq.agent.placement import owner
    from powerq.tasks.app import app

    env = {
        "POWERQ_LANES": str(lanes),
        "POWERQ_MONITOR_INTERVAL_S": "3600",
        "PYTHONPATH": str(common.REPO_DIR),
    }
    if pool != "shipped":
        size, overflow = pool.split(",")
        env.update(POWERQ_DB_POOL_SIZE=size.strip(), POWERQ_DB_MAX_OVERFLOW=overflow.strip())
    started = time.monotonic()
    for name in names:
        group.python(name, "powerq.cli", "agent", "--lanes", "auto", "--name", name, extra_env=env)
    expected = {lane: owner(lane, names) for lane in range(lanes)}
    destinations = sorted(f"lane{lane}@{agent}" for lane, agent in expected.items())
    deadline = started + READY_TIMEOUT_S
    while True:
        dead = [c.name for c in group.dead() if c.name in names]
        if dead:
            raise RuntimeError(f"agents died: {dead}; logs in {group.log_dir}")
        if lease_owners() == expected:
            answered: set[str] = set()
            for reply in app.control.ping(destination=destinations, timeout=1.0):
                answered |= set(reply)
            if answered >= set(destinations):
                return time.monotonic() - started
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"agents {names} not settled after {READY_TIMEOUT_S:.0f} s: leases "
                f"{lease_owners()}, expected {expected}; logs in {group.log_dir}"
            )
        time.sleep(0.5)


def lease_owners() -> dict[int, str]:
    """Lane -> owner of every live lane lease."""
    from sqlalchemy import text

    from powerq.db import session_scope

    with session_scope() as session:
        rows = session.execute(
            text("SELECT lane, owner FROM lane_leases WHERE expires_at > now()")
        ).all()
    return {int(lane): str(owner) for lane, owner in rows}


def stop_agents(group: Any, names: list[str]) -> None:
    """SIGTERM every agent at once (each stops its workers, gives its lanes back and
    leaves), then wait for each (SIGKILL after 30 s)."""
    for name in names:
        child = group.children.get(name)
        if child is not None and child.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGTERM)
    for name in names:
        group.stop(name, timeout=30)


# --- one batch ------------------------------------------------------------------------------


@dataclass
class Context:
    """What every run of one invocation shares."""

    services: common.Services
    fleet: Any
    names: list[str]
    lanes: int


def one_batch(
    ctx: Context, agents: list[str], action: str, background: dict[str, float]
) -> dict[str, Any]:
    """One verified batch ``action`` of every node; its figures and what the BMCs executed."""
    n = len(ctx.names)
    power_all(ctx.fleet, "off" if action == "on" else "on")  # also empties the BMCs' logs
    actor = f"bench-scaling-A{len(agents)}-{action}"
    owners = lease_owners()
    before = snapshot(ctx.services, ctx.services.database_name)
    t0 = time.time()
    submit_s = submit_batch(ctx.names, action, actor)
    polls = 0
    state: dict[str, Any] = {}

    peak_connections = 0

    def finished() -> bool:
        nonlocal state, polls, peak_connections
        polls += 1
        state = progress(actor)
        peak_connections = max(peak_connections, connections())
        return bool(state["done"] == n)

    common.wait_until(finished, RUN_TIMEOUT_S, f"batch {action} with {len(agents)} agents", POLL_S)
    done = snapshot(ctx.services, ctx.services.database_name)  # CPU at the end of the work
    time.sleep(STATS_FLUSH_S)
    after = snapshot(ctx.services, ctx.services.database_name)
    wall = float(state["last_finished"]) - t0
    window = deltas(before, after, own_transactions=2 * polls + 3)
    window_net = net(window, background)
    cpu = common.cpu_delta_by_party(before.cpu, done.cpu)
    busy = (done.busy[0] - before.busy[0]) / max(1.0, done.busy[1] - before.busy[1])
    fleet_after = wait_fleet_settled(ctx.fleet)
    at_bmcs = executions_at_bmcs(ctx.fleet)
    lanes, by_agent = per_lane_and_agent(actor, t0, ctx.lanes, owners)
    target = "off" if action == "off" else "on"
    problems = []
    if state["ok"] != n:
        problems.append(f"{state['ok']}/{n} requests succeeded")
    if fleet_after[target] != n:
        problems.append(f"fleet {fleet_after}, expected {n} {target}")
    if at_bmcs["executions"] != n or at_bmcs["nodes_without_execution"]:
        problems.append(
            f"{at_bmcs['executions']} power commands executed by {n} BMCs "
            f"({at_bmcs['nodes_without_execution']} nodes without one)"
        )
    if at_bmcs["beyond_one_per_node"] or at_bmcs["overlapping_a_transition"]:
        problems.append(
            f"{at_bmcs['beyond_one_per_node']} executions beyond one per node, "
            f"{at_bmcs['overlapping_a_transition']} overlapping a transition"
        )
    figures = {
        "action": action,
        "agents": len(agents),
        "wall_s": wall,
        "submit_s": submit_s,
        "actions_per_s": n / wall,
        "per_lane": lanes,
        "per_agent": by_agent,
        "requests": state,
        "progress_polls": polls,
        "peak_connections_to_the_database": peak_connections,
        "window": window,
        "window_net_of_idle": window_net,
        "per_action": per_unit(window, window_net, cpu, n),
        "cpu_s_by_party": cpu,
        "machine_busy_fraction": busy,
        "loadavg_after": os.getloadavg(),
        "fleet_after": fleet_after,
        "at_bmcs": at_bmcs,
        "problems": problems,
    }
    say(
        f"A={len(agents)} {action}: {wall:.1f} s ({n / wall:.0f} actions/s,"
        f" submit {submit_s:.1f} s),"
        f" {window['transactions'] / n:.2f} txn, {window['rows_written'] / n:.2f} rows,"
        f" {window['redis_commands'] / n:.1f} Redis commands per action; CPU s {cpu};"
        f" at the BMCs {at_bmcs}"
    )
    if problems:
        figures["not_succeeded"] = not_succeeded(ctx, actor, agents)
        say(f"!!! A={len(agents)} {action} FAILED: {'; '.join(problems)}")
        say(f"!!! requests that did not succeed: {figures['not_succeeded']}")
    return figures


def warm_up(ctx: Context, actions: list[str]) -> dict[str, Any]:
    """One unmeasured batch of each action before the first agent count: the executor
    learns each node's transition window from its first actions (later checks are
    fewer and cheaper), so without this the first agent count alone pays for it."""
    out = {}
    for action in actions:
        power_all(ctx.fleet, "off" if action == "on" else "on")
        actor = f"bench-scaling-warmup-{action}"
        start = time.time()
        submit_batch(ctx.names, action, actor)
        state = _wait_done(actor, len(ctx.names), f"warm-up batch {action}")
        out[action] = {"wall_s": time.time() - start, "requests": state}
        say(f"warm-up {action}: {out[action]['wall_s']:.1f} s, {state['ok']} succeeded, "
            f"{state['checks']:.0f} checks")  # fmt: skip
    wait_fleet_settled(ctx.fleet)
    return out


def _wait_done(actor: str, n: int, what: str) -> dict[str, Any]:
    """Poll until the ``n`` requests of ``actor`` are done; their progress."""
    state: dict[str, Any] = {}

    def finished() -> bool:
        nonlocal state
        state = progress(actor)
        return bool(state["done"] == n)

    common.wait_until(finished, RUN_TIMEOUT_S, what, POLL_S)
    return state


def not_succeeded(ctx: Context, actor: str, agents: list[str]) -> list[dict[str, Any]]:
    """Every request of the run that did not succeed: its fields, its node's last error,
    what its BMC logged, and the lines of the agents' logs that name it or are warnings."""
    from sqlalchemy import text

    from powerq.db import session_scope

    with session_scope() as session:
        rows = (
            session.execute(
                text(
                    "SELECT r.id::text, n.name, r.status::text, r.error, r.attempt, r.checks,"
                    " r.dispatch_count, n.last_error, r.created_at::text, r.finished_at::text"
                    " FROM power_requests r JOIN nodes n ON n.id = r.node_id"
                    " WHERE r.requested_by = :actor AND r.status <> 'succeeded' LIMIT 20"
                ),
                {"actor": actor},
            )
            .mappings()
            .all()
        )
    out = []
    for row in rows:
        entry = dict(row)
        with contextlib.suppress(Exception):
            entry["bmc_log"] = ctx.fleet.control.log(row["name"])[-20:]
        lines = []
        for agent in agents:
            path = ctx.services.data_dir / "logs" / f"{agent}.log"
            with contextlib.suppress(OSError):
                for line in path.read_text(errors="replace").splitlines():
                    if row["id"] in line or "ERROR" in line or "Traceback" in line:
                        lines.append(f"{agent}: {line[:400]}")
        entry["agent_log_lines"] = lines[-60:]
        out.append(entry)
    return out


def per_unit(
    window: dict[str, Any], window_net: dict[str, Any], cpu: dict[str, float], n: int
) -> dict[str, Any]:
    """A window's database, Redis and CPU costs divided over its ``n`` actions (or
    nodes), raw and net of the idle rate."""
    return {
        "transactions": window["transactions"] / n,
        "rows_written": window["rows_written"] / n,
        "redis_commands": window["redis_commands"] / n,
        "transactions_net": window_net["transactions"] / n,
        "rows_written_net": window_net["rows_written"] / n,
        "redis_commands_net": window_net["redis_commands"] / n,
        "cpu_ms_by_party": {party: s * 1000 / n for party, s in cpu.items()},
    }


def per_lane_and_agent(
    actor: str, t0: float, lanes: int, owners: dict[int, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Actions/s of each lane (its requests over the time to its last ``finished_at``), and
    of each agent (the lanes it held during the batch)."""
    from sqlalchemy import text

    from powerq.db import session_scope
    from powerq.tasks.routing import lane_for

    with session_scope() as session:
        rows = session.execute(
            text(
                "SELECT n.name, extract(epoch FROM r.finished_at) FROM power_requests r"
                " JOIN nodes n ON n.id = r.node_id WHERE r.requested_by = :actor"
                " AND r.status = 'succeeded'"
            ),
            {"actor": actor},
        ).all()
    count = [0] * lanes
    last = [t0] * lanes
    for name, finished in rows:
        lane = lane_for(name, lanes)
        count[lane] += 1
        last[lane] = max(last[lane], float(finished))
    lane_rates = [count[k] / max(1e-6, last[k] - t0) for k in range(lanes)]
    agents: dict[str, Any] = {}
    for lane in range(lanes):
        agent = owners.get(lane, "?")
        entry = agents.setdefault(agent, {"lanes": [], "actions": 0, "last": t0})
        entry["lanes"].append(lane)
        entry["actions"] += count[lane]
        entry["last"] = max(entry["last"], last[lane])
    for entry in agents.values():
        entry["actions_per_s"] = entry["actions"] / max(1e-6, entry.pop("last") - t0)
    ordered = sorted(lane_rates)
    return (
        {
            "actions": count,
            "actions_per_s": lane_rates,
            "min": ordered[0],
            "median": common.median(ordered),
            "max": ordered[-1],
        },
        agents,
    )


def idle_window(ctx: Context, seconds: float) -> dict[str, Any]:
    """The installation doing nothing for ``seconds``: background rates and lease heartbeats."""
    time.sleep(STATS_FLUSH_S)  # counters of the start-up have landed
    before = snapshot(ctx.services, ctx.services.database_name)
    time.sleep(seconds)
    after = snapshot(ctx.services, ctx.services.database_name)
    window = deltas(before, after, own_transactions=1)
    tables = window["rows_by_table"]
    span = window["seconds"]
    return {
        **window,
        "rates": rates(window),
        "agents_rows_updated_per_s": tables.get("agents", {}).get("upd", 0) / span,
        "lane_leases_rows_updated_per_s": tables.get("lane_leases", {}).get("upd", 0) / span,
        "cpu_s_by_party": common.cpu_delta_by_party(before.cpu, after.cpu),
    }


# --- the monitor ----------------------------------------------------------------------------


def monitor_tick(ctx: Context, background: dict[str, float]) -> dict[str, Any]:
    """One monitor refresh of every node through the lanes (every node due); its writes."""
    from bench.monitor import refreshed, sessions_opened
    from powerq.config import get_settings
    from powerq.tasks.monitor import monitor

    n = len(ctx.names)
    os.environ["POWERQ_MONITOR_INTERVAL_S"] = "1"  # every node is due (this process only)
    get_settings.cache_clear()
    time.sleep(2)
    logins0 = sessions_opened(ctx.fleet)
    before = snapshot(ctx.services, ctx.services.database_name)
    t0 = time.time()
    marked = monitor()
    polls = 0
    state: dict[str, Any] = {}

    def done() -> bool:
        nonlocal state, polls
        polls += 1
        state = refreshed(t0)
        return state["done"] + state["errors"] >= n

    common.wait_until(done, RUN_TIMEOUT_S, "monitor refresh", POLL_S)
    end = snapshot(ctx.services, ctx.services.database_name)
    time.sleep(STATS_FLUSH_S)
    after = snapshot(ctx.services, ctx.services.database_name)
    os.environ["POWERQ_MONITOR_INTERVAL_S"] = "3600"
    get_settings.cache_clear()
    window = deltas(before, after, own_transactions=polls + 3)
    window_net = net(window, background)
    cpu = common.cpu_delta_by_party(before.cpu, end.cpu)
    wall = float(state["last"] or time.time()) - t0
    figures = {
        "marked": marked,
        "wall_s": wall,
        "refreshed": state,
        "logins": sessions_opened(ctx.fleet) - logins0,
        "window": window,
        "window_net_of_idle": window_net,
        "per_node": per_unit(window, window_net, cpu, n),
        "cpu_s_by_party": cpu,
    }
    say(
        f"monitor refresh of {n}: {wall:.1f} s, {state}, {window_net['transactions'] / n:.3f} txn,"
        f" {window_net['rows_written'] / n:.2f} rows, "
        f"{window_net['redis_commands'] / n:.3f} Redis commands per node (net of idle)"
    )
    return figures


# --- ceilings of this host -----------------------------------------------------------------

CEILING_S = 10


def ceilings(services: common.Services, private_redis: bool) -> dict[str, Any]:
    """What this host's PostgreSQL and Redis do flat out, under the same load, right after
    the agents stopped: ``pgbench -b simple-update`` (one transaction: an UPDATE, a SELECT,
    an INSERT: 2 rows written) in the bench database, 8 clients, CEILING_S seconds; and
    ``redis-benchmark`` LPUSH / RPOP / SET on the private redis-server (not on a shared one:
    ``--redis-url`` skips it). The capacity model divides by these.
    """
    import shutil
    import subprocess

    out: dict[str, Any] = {}
    if shutil.which("pgbench"):
        url = services.psycopg_url
        init = subprocess.run(
            ["pgbench", "-i", "-s", "1", "-q", url], capture_output=True, text=True, timeout=120
        )
        run = subprocess.run(
            ["pgbench", "-n", "-b", "simple-update", "-c", "8", "-j", "2",
             "-T", str(CEILING_S), url],
            capture_output=True, text=True, timeout=CEILING_S + 120,
        )  # fmt: skip
        tps = [
            float(line.split("=")[1].split()[0])
            for line in run.stdout.splitlines()
            if line.startswith("tps =")
        ]
        out["pgbench_simple_update_tps"] = tps[0] if tps else None
        out["pgbench_rows_per_txn"] = 2
        if not tps:
            out["pgbench_error"] = (init.stderr + run.stderr)[-2000:]
    else:
        out["pgbench_error"] = "pgbench not installed"
    if private_redis and shutil.which("redis-benchmark"):
        host, port = services.broker_url.removeprefix("redis://").split("/")[0].split(":")
        run = subprocess.run(
            ["redis-benchmark", "-h", host, "-p", port, "-n", "200000", "-c", "50",
             "-t", "lpush,rpop,set", "--csv"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        for line in run.stdout.splitlines():
            cells = [c.strip('"') for c in line.split(",")]
            if len(cells) > 1 and cells[0] in ("LPUSH", "RPOP", "SET"):
                out[f"redis_{cells[0].lower()}_per_s"] = float(cells[1])
    else:
        out["redis_error"] = "skipped: not a private redis-server, or no redis-benchmark"
    say(f"ceilings of this host: {out}")
    return out


# --- the monitor's marking at fleet sizes no sim fleet reaches --------------------------------


def monitor_mark(args: argparse.Namespace) -> Result:
    """``--monitor-mark SIZES``: the database side of a monitor tick at each size.

    No BMC is read: nodes are inserted (as :func:`common.register_nodes` does, BMC
    addresses that are never contacted), then ``due_for_refresh`` (what the beat's
    monitor call does before it rings the lanes) is timed twice per size: with
    every node due (a tick after a full interval), then at once again with none
    due (the cost of a tick that has nothing to do). Each page of
    :data:`~powerq.tasks.monitor.PAGE_SIZE` is one statement; its plan is kept.
    """
    sizes = [int(x) for x in args.monitor_mark.split(",")]
    result = Result(f"{args.output}-monitor-mark", {"sizes": sizes})
    with common.bench_services(args.lanes, redis_url=args.redis_url) as services:
        from sqlalchemy import text

        from powerq.db import session_scope
        from powerq.tasks.monitor import PAGE_SIZE, due_for_refresh

        registered = 0
        base: float | None = None
        for size in sizes:
            manifest = [
                {"name": f"m{i:07d}", "address": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                 "port": 623, "username": "admin", "password": "password"}
                for i in range(registered, size)
            ]  # fmt: skip
            common.register_nodes(manifest)
            registered = size
            with session_scope() as session:
                session.execute(
                    text("UPDATE nodes SET last_checked_at = now() - interval '1 hour'")
                )
                session.execute(text("ANALYZE nodes"))
            start = time.perf_counter()
            marked = len(due_for_refresh(60.0))
            full = time.perf_counter() - start
            start = time.perf_counter()
            again = len(due_for_refresh(60.0))
            empty = time.perf_counter() - start
            pages = -(-marked // PAGE_SIZE)
            per_page_ms = full * 1000 / max(1, pages)
            base = base if base is not None else per_page_ms
            figures = {
                "marked": marked,
                "pages": pages,
                "all_due_s": full,
                "per_page_ms": per_page_ms,
                "none_due_s": empty,
                "marked_again": again,
                "plan": _mark_plan(services),
            }
            result.details[str(size)] = figures
            say(f"monitor marking of {size:,} nodes: {full:.2f} s for {pages} pages "
                f"({per_page_ms:.0f} ms a page); an idle tick {empty * 1000:.0f} ms")  # fmt: skip
            result.add(
                Row("11 scaling", f"monitor marking, {size:,} nodes all due: time per page of "
                    f"{PAGE_SIZE}", "ms", "(info)", f"{sizes[0]:,} nodes, same run", base,
                    per_page_ms, per_page_ms / base, None,
                    f"{full:.2f} s for all {pages} pages; idle tick {empty * 1000:.0f} ms")
            )  # fmt: skip
    return result


def _mark_plan(services: common.Services) -> list[str]:
    """EXPLAIN (ANALYZE) of one marking page, rolled back."""
    from sqlalchemy import text
    from sqlalchemy.dialects import postgresql

    from powerq.db import db_now, session_scope
    from powerq.tasks import monitor as monitor_module

    captured: list[Any] = []
    with session_scope() as session:
        tick = db_now(session)
        original = session.execute

        def capture(statement: Any, *a: Any, **k: Any) -> Any:
            captured.append(statement)
            return original(statement, *a, **k)

        session.execute = capture  # type: ignore[method-assign]
        try:
            monitor_module._mark_page(session, tick, 0.0, monitor_module.PAGE_SIZE)
        finally:
            session.execute = original  # type: ignore[method-assign]
        compiled = captured[0].compile(
            dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
        )
        rows = session.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}")).all()
        session.rollback()
    return [row[0] for row in rows]


# --- the capacity model (SCALING.md) ----------------------------------------------------------

# Assumptions of the model, not measurements (SCALING.md says why each).
MODEL_BATCH_WINDOW_S = 300.0  # a fleet-wide verified batch should finish in 5 minutes
MODEL_LANE_CORE_SHARE = 0.5  # plan each lane (one Python process: at most one core) at half a core
MODEL_CORES_PER_HOST = 16  # an agent host: 16 cores, so 16 lanes at half a core each leave 8 free
MODEL_SPARE_HOSTS = 1  # one host more than the load needs: a dead host's lanes move to the rest
MODEL_CONNECTIONS_PER_PROCESS = 6  # POWERQ_DB_POOL_SIZE 3 + POWERQ_DB_MAX_OVERFLOW 3, as shipped
MODEL_OTHER_CONNECTIONS = 6 + 2 * 11  # control worker; 2 API workers x (8 threads + 3 overflow)
MODEL_SIZES = ((10_000, 60.0), (100_000, 60.0), (1_000_000, 60.0), (1_000_000, 600.0))


def model(path: str) -> str:
    """The sizing table of SCALING.md, from a results file of this benchmark."""
    import json
    import math

    data = json.loads(open(path).read())  # noqa: SIM115 (read once)
    figures = data["details"]["combined"]
    lanes_run = data["params"]["lanes"]

    def mean(key: str) -> float:
        return sum(f[key] for f in figures.values()) / len(figures)

    txn, rows, redis = mean("transactions"), mean("rows_written"), mean("redis_commands")
    cpu_ms = mean("agents_cpu_ms")
    monitor = data["details"]["monitor"]["per_node"]
    idle = data["details"][f"A{data['params']['agents'][0]}"]["idle"]
    idle_redis_per_lane = idle["rates"]["redis_commands"] / lanes_run
    ceilings = data["details"].get("ceilings", {})
    lines = [
        f"Per action (mean of {len(figures)} agent counts): {txn:.2f} transactions, "
        f"{rows:.1f} rows, {redis:.1f} Redis commands, {cpu_ms:.1f} ms of lane CPU. Per node "
        f"read by the monitor: {monitor['transactions_net']:.3f} transactions, "
        f"{monitor['rows_written_net']:.2f} rows, {monitor['redis_commands_net']:.3f} Redis "
        f"commands, {monitor['cpu_ms_by_party'].get('agents', 0.0):.1f} ms of lane CPU. "
        f"Idle: {idle_redis_per_lane:.2f} Redis commands/s per lane.",
        "",
        "| fleet | monitor period | batch actions/s | lane cores | lanes | agent hosts |"
        " PG txn/s batch | PG rows/s batch | PG txn/s monitor | PG rows/s monitor |"
        " Redis cmds/s batch + idle | Redis cmds/s monitor | lease heartbeats txn/s, rows/s |"
        " PG connections (as shipped) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for nodes, period in MODEL_SIZES:
        rate = nodes / MODEL_BATCH_WINDOW_S
        cores = rate * cpu_ms / 1000
        reads = nodes / period
        monitor_cores = reads * monitor["cpu_ms_by_party"].get("agents", 0.0) / 1000
        wanted = max(8, (cores + monitor_cores) / MODEL_LANE_CORE_SHARE)
        lanes = min(1024, MODEL_CORES_PER_HOST * math.ceil(wanted / MODEL_CORES_PER_HOST))
        hosts = math.ceil(lanes / MODEL_CORES_PER_HOST) + MODEL_SPARE_HOSTS
        connections = lanes * MODEL_CONNECTIONS_PER_PROCESS + MODEL_OTHER_CONNECTIONS + hosts
        lines.append(
            f"| {nodes:,} | {period:.0f} s | {rate:,.0f} | {cores + monitor_cores:.1f} | {lanes}"
            f" | {hosts} | {rate * txn:,.0f} | {rate * rows:,.0f}"
            f" | {reads * monitor['transactions_net']:,.0f}"
            f" | {reads * monitor['rows_written_net']:,.0f}"
            f" | {rate * redis + lanes * idle_redis_per_lane:,.0f}"
            f" | {reads * monitor['redis_commands_net']:,.0f}"
            f" | {hosts / 3:.1f}, {(hosts + lanes) / 3:.0f} | {connections:,} |"
        )
    if ceilings.get("pgbench_simple_update_tps"):
        tps = ceilings["pgbench_simple_update_tps"]
        lines += [
            "",
            f"This host's ceilings (same run): pgbench simple-update {tps:,.0f} txn/s "
            f"({2 * tps:,.0f} rows/s): {min(tps / txn, 2 * tps / rows):,.0f} powerq actions/s; "
            f"redis-benchmark LPUSH {ceilings.get('redis_lpush_per_s', 0):,.0f}/s: "
            f"{ceilings.get('redis_lpush_per_s', 0) / redis:,.0f} powerq actions/s; "
            f"lane CPU: {1000 / cpu_ms:,.0f} actions/s per core.",
        ]
    return "\n".join(lines)


# --- the benchmark --------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Result:
    """Every agent count on one fleet, one database, one Redis; the rows."""
    counts = [int(x) for x in args.agents.split(",")]
    actions = [a.strip() for a in args.actions.split(",") if a.strip()]
    if set(actions) - {"off", "on"} or not actions:
        raise SystemExit(f"--actions: off and/or on (got {actions})")
    result = Result(
        args.output,
        {
            "nodes": args.nodes,
            "lanes": args.lanes,
            "agents": counts,
            "transition_s": args.transition,
            "actions": actions,
            "idle_s": args.idle,
            "agents_db_pool": args.db_pool,
            "lane_lease_s": None,
            "lane_fanout": None,
        },
    )
    result.details["loadavg_start"] = os.getloadavg()
    with common.bench_services(args.lanes, redis_url=args.redis_url) as services:
        from powerq.config import get_settings
        from powerq.tasks.app import app  # noqa: F401  (imported with --lanes lanes)

        _stats_connection(services.psycopg_url)  # now, while the shared server has room
        settings = get_settings()
        result.params["lane_lease_s"] = settings.lane_lease_s
        result.params["lane_fanout"] = settings.lane_fanout
        result.params["sweep_interval_s"] = settings.sweep_interval_s
        group = services.processes
        env = {"POWERQ_LANES": str(args.lanes), "POWERQ_MONITOR_INTERVAL_S": "3600"}
        common.start_control_and_beat(group, env)
        with common.sim_fleet(args.nodes, transition=args.transition) as fleet:
            names = common.register_nodes(fleet.manifest)
            say(f"fleet of {args.nodes} BMCs up and registered; {args.lanes} lanes")
            ctx = Context(services, fleet, names, args.lanes)
            for count in counts:
                agents = agent_names(count)
                detail: dict[str, Any] = {"loadavg_start": os.getloadavg()}
                try:
                    detail["ready_s"] = start_agents(group, agents, args.lanes, args.db_pool)
                    detail["lanes_by_agent"] = _lanes_by_agent(lease_owners())
                    say(f"A={count}: settled in {detail['ready_s']:.1f} s, "
                        f"lanes {detail['lanes_by_agent']}")  # fmt: skip
                    if count == counts[0] and not args.no_warmup:
                        result.details["warmup"] = warm_up(ctx, actions)
                    detail["idle"] = idle_window(ctx, args.idle)
                    background = detail["idle"]["rates"]
                    say(f"A={count} idle: {background}, agents rows/s "
                        f"{detail['idle']['agents_rows_updated_per_s']:.2f}, lane_leases rows/s "
                        f"{detail['idle']['lane_leases_rows_updated_per_s']:.2f}")  # fmt: skip
                    for action in actions:
                        detail[action] = one_batch(ctx, agents, action, background)
                    if count == counts[-1] and not args.no_monitor:
                        result.details["monitor"] = monitor_tick(ctx, background)
                        result.details["monitor"]["agents"] = count
                finally:
                    stop_agents(group, agents)
                detail["loadavg_end"] = os.getloadavg()
                result.details[f"A{count}"] = detail
            if not args.no_ceilings:
                result.details["ceilings"] = ceilings(services, args.redis_url is None)
    add_rows(result, counts, actions, args.nodes, args.lanes)
    return result


def _close_stats() -> None:
    for conn in _STATS.values():
        with contextlib.suppress(Exception):
            conn.close()
    _STATS.clear()


def _lanes_by_agent(owners: dict[int, str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for lane, agent in sorted(owners.items()):
        out.setdefault(agent, []).append(lane)
    return out


def combined(detail: dict[str, Any], actions: list[str], n: int) -> dict[str, float]:
    """The figures of one agent count over all of its batches (2N actions for off,on)."""
    runs = [detail[a] for a in actions]
    total = n * len(runs)
    wall = sum(r["wall_s"] for r in runs)
    agents = runs[0]["agents"]
    lane_cpu = sum(r["cpu_s_by_party"].get("agents", 0.0) for r in runs)
    pg_cpu = sum(r["cpu_s_by_party"].get("postgres (bench db)", 0.0) for r in runs)

    def per(key: str) -> float:
        return sum(r["window_net_of_idle"][key] for r in runs) / total

    return {
        "actions": total,
        "wall_s": wall,
        "actions_per_s": total / wall,
        "per_lane_median": common.median([r["per_lane"]["median"] for r in runs]),
        "per_agent": total / wall / agents,
        "transactions": per("transactions"),
        "rows_written": per("rows_written"),
        "redis_commands": per("redis_commands"),
        "agents_cpu_ms": lane_cpu * 1000 / total,
        "pg_cpu_ms": pg_cpu * 1000 / total,
        "problems": sum(len(r["problems"]) for r in runs),
    }


def add_rows(result: Result, counts: list[int], actions: list[str], n: int, lanes: int) -> None:
    """Rows: each figure per agent count, as a ratio to the first agent count's."""
    figures = {c: combined(result.details[f"A{c}"], actions, n) for c in counts}
    result.details["combined"] = figures
    base_count = counts[0]
    base = figures[base_count]
    label = f"{base_count} agent{'s' if base_count != 1 else ''}, same run"
    what = "+".join(actions)
    specs = (
        ("actions/s overall", "actions/s", "actions_per_s"),
        ("actions/s per lane (median lane)", "actions/s", "per_lane_median"),
        ("actions/s per agent", "actions/s", "per_agent"),
        ("PostgreSQL transactions per action (net of idle)", "txn", "transactions"),
        ("PostgreSQL rows written per action (net of idle)", "rows", "rows_written"),
        ("Redis commands per action (net of idle)", "commands", "redis_commands"),
        ("agents + lane workers CPU per action", "ms", "agents_cpu_ms"),
        ("bench database's PostgreSQL backends CPU per action", "ms", "pg_cpu_ms"),
    )
    for count in counts:
        mine = figures[count]
        for metric, unit, key in specs:
            ratio = mine[key] / base[key] if base[key] else None
            result.add(
                Row("11 scaling", f"N={n} L={lanes} A={count} {what}: {metric}", unit, "(info)",
                    label, base[key], mine[key], ratio, None)
            )  # fmt: skip
        idle = result.details[f"A{count}"]["idle"]
        result.add(
            Row("11 scaling", f"A={count} idle: agent heartbeat statements per agent per s",
                "stmt/s", "5 per lease", "5 / POWERQ_LANE_LEASE_S",
                5 / float(result.params["lane_lease_s"]),
                idle["agents_rows_updated_per_s"] / count,
                idle["agents_rows_updated_per_s"] / count
                / (5 / float(result.params["lane_lease_s"])), None,
                f"lane_leases rows renewed {idle['lane_leases_rows_updated_per_s']:.2f}/s; "
                f"idle {idle['rates']['transactions']:.1f} txn/s, "
                f"{idle['rates']['redis_commands']:.0f} Redis commands/s")
        )  # fmt: skip
        problems = [p for a in actions for p in result.details[f"A{count}"][a]["problems"]]
        at = [result.details[f"A{count}"][a]["at_bmcs"] for a in actions]
        result.add(
            Row("11 scaling", f"A={count}: power commands executed at the BMCs per node per action",
                "commands", "exactly 1, 0 overlaps", "", None,
                sum(x["executions"] for x in at) / (n * len(actions)), None, not problems,
                ("NOT CORRECT: " + "; ".join(problems)) if problems else
                f"{sum(x['executions'] for x in at)} executions for {n * len(actions)} actions, "
                f"{sum(x['overlapping_a_transition'] for x in at)} overlapping")
        )  # fmt: skip
    if "monitor" in result.details:
        per_node = result.details["monitor"]["per_node"]
        mon = result.details["monitor"]
        result.add(
            Row("11 scaling", f"monitor refresh of {n} nodes: per node read", "txn / rows",
                "(info)", "", per_node["transactions_net"], per_node["rows_written_net"], None,
                None, f"wall {mon['wall_s']:.1f} s; Redis commands per node "
                f"{per_node['redis_commands_net']:.3f}; logins {mon['logins']}")
        )  # fmt: skip


def table_markdown(result: Result) -> str:
    """The BENCHMARKS.md table of one run."""
    figures = result.details["combined"]
    counts = list(figures)
    base = figures[counts[0]]
    lines = [
        "| agents | actions/s | x | per lane (median) | per agent | PG txn / action | "
        "PG rows / action | Redis cmds / action | agent CPU ms / action | PG CPU ms / action |"
        " heartbeats / agent / s | BMC commands / node / action, overlaps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for count in counts:
        f = figures[count]
        idle = result.details[f"A{count}"]["idle"]
        at = [result.details[f"A{count}"][a]["at_bmcs"] for a in result.params["actions"]]
        execs = sum(x["executions"] for x in at) / f["actions"]
        overlaps = sum(x["overlapping_a_transition"] for x in at)
        lines.append(
            f"| {count} | {f['actions_per_s']:.0f}"
            f" | {f['actions_per_s'] / base['actions_per_s']:.2f}"
            f" | {f['per_lane_median']:.1f} | {f['per_agent']:.0f} | {f['transactions']:.2f}"
            f" | {f['rows_written']:.2f} | {f['redis_commands']:.1f} | {f['agents_cpu_ms']:.1f}"
            f" | {f['pg_cpu_ms']:.1f} | {idle['agents_rows_updated_per_s'] / count:.2f}"
            f" | {execs:.2f}, {overlaps} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> Result:
    """Run, print the table, write the JSON; loud when the BMCs did not execute exactly one
    command per node per action."""
    if args.model:
        print(model(args.model))
        raise SystemExit(0)
    if args.monitor_mark:
        result = monitor_mark(args)
        print(common.rows_table(result.rows))
        result.write()
        return result
    try:
        result = run(args)
    finally:
        _close_stats()
    print(common.rows_table(result.rows))
    print()
    print(table_markdown(result))
    result.write()
    bad = [r for r in result.rows if r.note.startswith("NOT")]
    if bad:
        say("!!! SCALING RUN FAILED: " + " | ".join(r.note for r in bad))
    return result
