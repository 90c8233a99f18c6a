"""powerq's Prometheus metrics, read from PostgreSQL (and Redis) when they are scraped.

PostgreSQL is the metrics store: every figure is computed at scrape time from
the rows the executor, the API and the sweeper write anyway, so no hot path
gains a statement or a Redis call, no worker needs a metrics port, and any API
process (gunicorn worker) answers a scrape with the same numbers: there is no
per-process state to merge.

A scrape costs three statements on one pooled connection, in one read-only
snapshot, whatever the size of the fleet or the history (:func:`read_snapshot`): one pass over
``power_requests`` (finished counts, failure kinds, re-dispatches and the three latency
histograms, buckets counted in SQL), the outstanding requests with their node
names (through the partial index of outstanding requests; mapped to lanes here
with :func:`powerq.tasks.routing.lane_for`), and one pass over ``nodes``. Lane
queue depths are one pipelined Redis ``LLEN`` per lane; an unreachable broker
gives ``powerq_broker_up 0`` and no depths, never a failed scrape.

See ``docs/metrics.md`` for every metric.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import (
    ColumnElement,
    Float,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Connection

from powerq.broker import bounded_connection
from powerq.db import get_engine
from powerq.models import Agent, LaneLease, Node, PowerRequest
from powerq.states import FINISHED_STATUSES, PowerState, RequestStatus
from powerq.tasks.routing import lane_for, lane_queue

log = logging.getLogger(__name__)

PREFIX = "powerq_"
BROKER_TIMEOUT_S = 1.0

# Upper bounds (seconds) of the latency histograms' buckets.
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
EXECUTION_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

# A failed request's kind, read from its error text (powerq records no error
# code): the first kind with a matching ILIKE pattern, else "other". Ordered:
# e.g. "credentials refused" is auth, not a refused command.
FAILURE_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unknown_outcome", ("reset was sent once %",)),
    ("not_started", ("not started before its batch's deadline%",)),
    ("deadline", ("% not verified within %", "% not verified by its deadline %")),
    ("driver", ("cannot drive BMC %",)),
    ("unreachable", ("BMC unreachable after %", "%no answer%", "%cannot connect%")),
    ("auth", ("%credentials refused%", "%authentication refused%")),
    ("rejected", ("%refused%", "%not supported%")),
    (
        "protocol",
        (
            "%cipher suite%",
            "%TLS failed%",
            "%no such resource%",
            "%unusable answer%",
            "%unexpected failure%",
            "%protocol%",
        ),
    ),
    ("boot_device", ("the BMC reports boot device %",)),
)
OTHER_KIND = "other"
# The failure kinds that are the BMC's answer (or its silence), for powerq_bmc_errors_total.
BMC_ERROR_KINDS: frozenset[str] = frozenset(
    {"unknown_outcome", "unreachable", "auth", "rejected", "protocol", "boot_device"}
)


@dataclass(frozen=True)
class Histogram:
    """One latency histogram of one label set: cumulative counts per bucket bound."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    total_s: float

    def buckets(self) -> list[tuple[str, float]]:
        """The buckets as prometheus_client wants them, ``+Inf`` last."""
        pairs = [
            (floatToGoString(b), float(n))  # type: ignore[no-untyped-call]
            for b, n in zip(self.bounds, self.cumulative, strict=True)
        ]
        return [*pairs, ("+Inf", float(self.count))]


@dataclass
class Snapshot:
    """Everything one scrape reports, read in :func:`read_snapshot`."""

    # (action, status): finished requests only, so every count only rises
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)  # (action, kind)
    redispatches: int = 0
    # histogram name (queue_wait, execution, to_success) -> action -> histogram
    latency: dict[str, dict[str, Histogram]] = field(default_factory=dict)
    outstanding: dict[tuple[int, str], int] = field(default_factory=dict)  # (lane, state)
    nodes: dict[str, int] = field(default_factory=dict)  # total, power_fault, drift, maintenance
    oldest_observation_age_s: float | None = None
    lane_depths: dict[int, int] | None = None  # None: the broker did not answer
    agents: int = 0  # live `powerq agent` processes
    lane_owners: dict[int, str] = field(default_factory=dict)  # lane -> agent, live leases


def _failure_kind() -> ColumnElement[str]:
    whens = [
        (or_(*(PowerRequest.error.ilike(pattern) for pattern in patterns)), literal(kind))
        for kind, patterns in FAILURE_KINDS
    ]
    return case(
        (PowerRequest.status != RequestStatus.FAILED, literal("")),
        *whens,
        else_=literal(OTHER_KIND),
    )


def _seconds(later: Any, earlier: Any) -> Any:
    """Seconds between two timestamps, as double precision: ``date_part`` (EXTRACT
    gives numeric, twice as slow over a history)."""
    return func.date_part("epoch", later - earlier, type_=Float)


def _histogram_columns(name: str, seconds: Any, bounds: Sequence[float]) -> list[Any]:
    """count, sum and a cumulative count per bucket of the column ``seconds`` (NULL:
    not in the histogram)."""
    columns = [
        func.count(seconds).label(f"{name}_count"),
        func.coalesce(func.sum(seconds), 0.0).label(f"{name}_sum"),
    ]
    columns += [
        func.count().filter(seconds <= bound).label(f"{name}_le_{i}")
        for i, bound in enumerate(bounds)
    ]
    return columns


_FINISHED = PowerRequest.status.in_([RequestStatus.SUCCEEDED, RequestStatus.FAILED])
_RAN = and_(_FINISHED, PowerRequest.started_at.is_not(None))
# name, seconds, which rows, bucket bounds
_HISTOGRAMS: tuple[tuple[str, Any, Any, tuple[float, ...]], ...] = (
    ("queue_wait", _seconds(PowerRequest.started_at, PowerRequest.created_at), _RAN,
     QUEUE_WAIT_BUCKETS),
    ("execution", _seconds(PowerRequest.finished_at, PowerRequest.started_at),
     and_(_RAN, PowerRequest.finished_at.is_not(None)), EXECUTION_BUCKETS),
    ("to_success", _seconds(PowerRequest.finished_at, PowerRequest.created_at),
     and_(PowerRequest.status == RequestStatus.SUCCEEDED, PowerRequest.finished_at.is_not(None)),
     EXECUTION_BUCKETS),
)  # fmt: skip


def _requests_statement() -> Any:
    """One pass over power_requests, grouped by action, status and failure kind.

    Each row's durations are computed once, in a subquery the buckets then only
    compare: its ``OFFSET 0`` keeps PostgreSQL from pulling it up into the
    aggregate, which would compute every duration again for each bucket (three
    times slower at 50,000 rows).
    """
    inner: list[Any] = [
        PowerRequest.action.label("action"),
        PowerRequest.status.label("status"),
        _failure_kind().label("kind"),
        func.greatest(PowerRequest.dispatch_count - 1, 0).label("again"),
    ]
    inner += [case((where, seconds)).label(name) for name, seconds, where, _ in _HISTOGRAMS]
    rows = select(*inner).offset(0).subquery("r")
    columns: list[Any] = [
        rows.c.action,
        rows.c.status,
        rows.c.kind,
        func.count().label("n"),
        func.coalesce(func.sum(rows.c.again), 0).label("redispatches"),
    ]
    for name, _, _, bounds in _HISTOGRAMS:
        columns += _histogram_columns(name, rows.c[name], bounds)
    return select(*columns).group_by(rows.c.action, rows.c.status, rows.c.kind)


_REQUESTS = _requests_statement()

# Outstanding requests with their node's name (the partial index of outstanding
# requests): at most one per node.
_OUTSTANDING = (
    select(
        Node.name,
        case(
            (PowerRequest.status == RequestStatus.RUNNING, literal("running")),
            (PowerRequest.held, literal("held")),
            else_=literal("pending"),
        ).label("state"),
    )
    .join(Node, Node.id == PowerRequest.node_id)
    .where(PowerRequest.status.in_([RequestStatus.PENDING, RequestStatus.RUNNING]))
)

_BUSY = exists().where(
    PowerRequest.node_id == Node.id,
    PowerRequest.status.in_([RequestStatus.PENDING, RequestStatus.RUNNING]),
)
# The monitor's rule (powerq/tasks/monitor.py): known, desired, different, and
# no request outstanding that is about to change it.
_DRIFTED = and_(
    Node.desired_power_state.is_not(None),
    Node.power_state != PowerState.UNKNOWN,
    cast(Node.power_state, String) != cast(Node.desired_power_state, String),
    ~_BUSY,
)
_NODES = select(
    func.count().label("total"),
    func.count().filter(Node.power_fault).label("power_fault"),
    func.count().filter(_DRIFTED).label("drift"),
    func.count().filter(Node.maintenance).label("maintenance"),
    func.count().filter(and_(~Node.maintenance, Node.power_state_at.is_(None))).label("unobserved"),
    _seconds(func.now(), func.min(Node.power_state_at).filter(~Node.maintenance)).label(
        "oldest_age_s"
    ),
    # Lane ownership rides along as scalar subqueries: no statement of its own.
    select(func.count())
    .where(Agent.expires_at > func.now())
    .scalar_subquery()
    .label("agents_live"),
    select(func.coalesce(func.json_object_agg(LaneLease.lane, LaneLease.owner), text("'{}'")))
    .where(LaneLease.expires_at > func.now())
    .scalar_subquery()
    .label("lane_owners"),
).where(Node.deleted_at.is_(None))

NODE_COUNTS = ("total", "power_fault", "drift", "maintenance", "unobserved")


def read_snapshot(lanes: int, *, broker: bool = True) -> Snapshot:
    """Read every metric: three statements on one connection, then the lanes' depths.

    The three statements share one snapshot (a read-only REPEATABLE READ
    transaction), so a request finishing between them is counted exactly once:
    finished (``powerq_requests_total``) or outstanding, never neither nor both.

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable or refused.
    :raises ConfigError: no database URL is configured.
    """
    snapshot = Snapshot()
    engine = get_engine().execution_options(
        isolation_level="REPEATABLE READ", postgresql_readonly=True
    )
    with engine.connect() as connection, connection.begin():
        _read_requests(connection, snapshot)
        _read_outstanding(connection, snapshot, lanes)
        _read_nodes(connection, snapshot)
    if broker:
        snapshot.lane_depths = lane_depths(lanes)
    return snapshot


def _read_requests(connection: Connection, snapshot: Snapshot) -> None:
    requests: dict[tuple[str, str], int] = defaultdict(int)
    failures: dict[tuple[str, str], int] = defaultdict(int)
    parts: dict[str, dict[str, list[Any]]] = {name: defaultdict(list) for name, *_ in _HISTOGRAMS}
    for row in connection.execute(_REQUESTS).mappings():
        action, status = str(row["action"].value), str(row["status"].value)
        # A counter must never fall: a request is counted once it is finished
        # (a row is never un-finished); outstanding ones are the
        # powerq_requests_outstanding gauge, not series of this counter.
        if row["status"] in FINISHED_STATUSES:
            requests[(action, status)] += row["n"]
        if row["kind"]:
            failures[(action, row["kind"])] += row["n"]
        snapshot.redispatches += int(row["redispatches"])
        for name, _, _, bounds in _HISTOGRAMS:
            parts[name][action].append(
                (
                    row[f"{name}_count"],
                    float(row[f"{name}_sum"]),
                    [row[f"{name}_le_{i}"] for i in range(len(bounds))],
                )
            )
    snapshot.requests, snapshot.failures = dict(requests), dict(failures)
    for name, _, _, bounds in _HISTOGRAMS:
        merged = {action: _merge(bounds, groups) for action, groups in parts[name].items()}
        snapshot.latency[name] = {a: h for a, h in merged.items() if h.count}


def _merge(bounds: tuple[float, ...], groups: Iterable[tuple[int, float, list[int]]]) -> Histogram:
    """One action's histogram from its status/kind groups."""
    count, total, cumulative = 0, 0.0, [0] * len(bounds)
    for n, seconds, buckets in groups:
        count, total = count + n, total + seconds
        cumulative = [a + b for a, b in zip(cumulative, buckets, strict=True)]
    return Histogram(bounds, tuple(cumulative), count, total)


def _read_outstanding(connection: Connection, snapshot: Snapshot, lanes: int) -> None:
    outstanding: dict[tuple[int, str], int] = defaultdict(int)
    for name, state in connection.execute(_OUTSTANDING):
        outstanding[(lane_for(name, lanes), state)] += 1
    snapshot.outstanding = dict(outstanding)


def _read_nodes(connection: Connection, snapshot: Snapshot) -> None:
    row = connection.execute(_NODES).mappings().one()
    snapshot.nodes = {name: int(row[name]) for name in NODE_COUNTS}
    age = row["oldest_age_s"]
    snapshot.oldest_observation_age_s = None if age is None else max(float(age), 0.0)
    snapshot.agents = int(row["agents_live"])
    owners = row["lane_owners"]
    owners = json.loads(owners) if isinstance(owners, str) else owners
    snapshot.lane_owners = {int(lane): str(owner) for lane, owner in owners.items()}


def lane_depths(lanes: int, timeout_s: float = BROKER_TIMEOUT_S) -> dict[int, int] | None:
    """Messages waiting in each lane's Redis list (one pipelined ``LLEN`` each), or
    None when the broker does not answer within ``timeout_s`` (never raises)."""
    try:
        with bounded_connection(timeout_s) as connection:
            pipe = connection.default_channel.client.pipeline()
            for lane in range(lanes):
                pipe.llen(lane_queue(lane))
            lengths = pipe.execute()
    except Exception as exc:  # any transport failure: report the broker down, not an error
        log.warning("metrics: broker unreachable: %s", exc)
        return None
    return {lane: int(length) for lane, length in enumerate(lengths)}


class PowerqCollector(Collector):
    """A prometheus_client collector that reads a :class:`Snapshot` on every scrape."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def collect(self) -> Iterator[Any]:
        """The metric families of one fresh snapshot.

        :raises sqlalchemy.exc.DBAPIError: the database is unreachable or refused.
        """
        yield from families(read_snapshot(self.lanes), self.lanes)


def families(snapshot: Snapshot, lanes: int) -> list[Any]:
    """``snapshot`` as Prometheus metric families (see docs/metrics.md)."""
    return [
        *_request_families(snapshot),
        *_latency_families(snapshot),
        *_lane_families(snapshot, lanes),
        *_node_families(snapshot),
    ]


def _request_families(snapshot: Snapshot) -> list[Any]:
    requests = CounterMetricFamily(
        PREFIX + "requests",
        "Finished power requests (succeeded, failed or cancelled), by action and status",
        labels=["action", "status"],
    )
    for (action, status), n in sorted(snapshot.requests.items()):
        requests.add_metric([action, status], n)
    failures = CounterMetricFamily(
        PREFIX + "request_failures",
        "Failed power requests, by action and failure kind (read from the error text)",
        labels=["action", "kind"],
    )
    bmc: dict[str, int] = defaultdict(int)
    for (action, kind), n in sorted(snapshot.failures.items()):
        failures.add_metric([action, kind], n)
        if kind in BMC_ERROR_KINDS:
            bmc[kind] += n
    bmc_errors = CounterMetricFamily(
        PREFIX + "bmc_errors",
        "Requests failed by their BMC's answer or silence, by kind",
        labels=["kind"],
    )
    for kind in sorted(BMC_ERROR_KINDS):
        bmc_errors.add_metric([kind], bmc.get(kind, 0))
    redispatches = CounterMetricFamily(
        PREFIX + "redispatches",
        "Step messages sent again for a request after its first (sweeper re-rings)",
        value=snapshot.redispatches,
    )
    return [requests, failures, bmc_errors, redispatches]


_LATENCY_DOCS = {
    "queue_wait": ("request_queue_wait_seconds",
                   "Finished requests: from recorded to first claimed by a lane worker"),
    "execution": ("request_execution_seconds",
                  "Finished requests: from first claimed to finished"),
    "to_success": ("request_to_success_seconds",
                   "Succeeded requests: from recorded (POST) to verified (or acknowledged)"),
}  # fmt: skip


def _latency_families(snapshot: Snapshot) -> list[Any]:
    result = []
    for name, (metric, doc) in _LATENCY_DOCS.items():
        family = HistogramMetricFamily(PREFIX + metric, doc, labels=["action"])
        for action, histogram in sorted(snapshot.latency.get(name, {}).items()):
            family.add_metric([action], histogram.buckets(), histogram.total_s)
        result.append(family)
    return result


def _lane_families(snapshot: Snapshot, lanes: int) -> list[Any]:
    outstanding = GaugeMetricFamily(
        PREFIX + "requests_outstanding",
        "Outstanding requests by lane and state (pending, held by its batch, running)",
        labels=["lane", "state"],
    )
    for lane in range(lanes):
        for state in ("pending", "held", "running"):
            outstanding.add_metric([str(lane), state], snapshot.outstanding.get((lane, state), 0))
    broker_up = GaugeMetricFamily(
        PREFIX + "broker_up", "Whether the broker (Redis) answered this scrape",
        value=0 if snapshot.lane_depths is None else 1,
    )  # fmt: skip
    depth = GaugeMetricFamily(
        PREFIX + "lane_queue_depth", "Messages waiting in a lane's Redis list", labels=["lane"]
    )
    for lane, length in sorted((snapshot.lane_depths or {}).items()):
        depth.add_metric([str(lane)], length)
    return [outstanding, broker_up, depth, *_ownership_families(snapshot, lanes)]


def _ownership_families(snapshot: Snapshot, lanes: int) -> list[Any]:
    agents = GaugeMetricFamily(
        PREFIX + "agents", "Live powerq agents (heartbeat not expired)", value=snapshot.agents
    )
    held = GaugeMetricFamily(
        PREFIX + "lane_held",
        "1 while a live agent holds the lane's lease (agent: its name), 0 for a lane nobody "
        "holds: its requests wait until an agent takes it",
        labels=["lane", "agent"],
    )
    for lane in range(lanes):
        owner = snapshot.lane_owners.get(lane)
        held.add_metric([str(lane), owner or ""], 0 if owner is None else 1)
    return [agents, held]


_NODE_DOCS = {
    "total": ("nodes", "Registered nodes (not deleted)"),
    "power_fault": ("nodes_power_fault", "Nodes in power_fault (repeated BMC failures)"),
    "drift": ("nodes_drift", "Nodes whose observed state differs from the desired one, "
              "with nothing outstanding (the monitor's rule)"),
    "maintenance": ("nodes_maintenance", "Nodes in maintenance"),
    "unobserved": ("nodes_unobserved", "Nodes not in maintenance never read from their BMC"),
}  # fmt: skip


def _node_families(snapshot: Snapshot) -> list[Any]:
    result: list[Any] = [
        GaugeMetricFamily(PREFIX + metric, doc, value=snapshot.nodes.get(name, 0))
        for name, (metric, doc) in _NODE_DOCS.items()
    ]
    staleness = GaugeMetricFamily(
        PREFIX + "oldest_observation_age_seconds",
        "Age of the oldest power-state reading among nodes not in maintenance",
    )
    if snapshot.oldest_observation_age_s is not None:
        staleness.add_metric([], snapshot.oldest_observation_age_s)
    result.append(staleness)
    return result
