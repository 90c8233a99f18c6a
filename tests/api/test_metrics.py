"""GET /metrics: exact values from known rows, auth, a broker that is down, and a
scrape's statement count (fixed, whatever the size of the fleet and history)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from apiflask import APIFlask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from powerq.api import create_app
from powerq.bmc import ipmi_errors
from powerq.bmc.base import BmcTarget
from powerq.config import Settings, get_settings
from powerq.metrics import read_snapshot
from powerq.models import Node, PowerRequest
from powerq.states import Action, DesiredPowerState, PowerState, RequestStatus
from powerq.tasks import verify
from powerq.tasks.app import app as celery_app
from powerq.tasks.routing import lane_for, lane_queue
from tests.factories import make_node
from tests.statements import count_statements

T0 = datetime(2026, 1, 1, tzinfo=UTC)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: FlaskClient, headers: dict[str, str] | None = None) -> Samples:
    """GET /metrics, parsed by prometheus_client's own parser: {(sample, labels): value}."""
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (KeyError: not exposed)."""
    return samples[(name, frozenset(labels.items()))]


def add_request(
    session: Session,
    node: Node,
    action: Action,
    status: RequestStatus,
    *,
    created: datetime = T0,
    started_after_s: float | None = None,
    finished_after_s: float | None = None,
    error: str | None = None,
    held: bool = False,
    dispatch_count: int = 1,
) -> PowerRequest:
    """A request row with known timestamps (seconds after ``created``)."""

    def after(seconds: float | None) -> datetime | None:
        return None if seconds is None else created + timedelta(seconds=seconds)

    request = PowerRequest(
        node_id=node.id,
        action=action,
        status=status,
        deadline_s=60.0,
        requested_by="test",
        created_at=created,
        started_at=after(started_after_s),
        finished_at=after(finished_after_s),
        error=error,
        held=held,
        dispatch_count=dispatch_count,
    )
    session.add(request)
    session.commit()
    return request


@pytest.fixture
def history(session: Session) -> dict[str, Node]:
    """Finished requests with known timings, outstanding ones, and nodes in known states."""
    nodes = {name: make_node(session, name) for name in ("a", "b", "c", "d", "e", "f")}
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    add_request(session, a, Action.ON, RequestStatus.SUCCEEDED, started_after_s=0.2,
                finished_after_s=3.0, dispatch_count=3)  # fmt: skip
    add_request(session, a, Action.ON, RequestStatus.SUCCEEDED, started_after_s=0.02,
                finished_after_s=0.52)  # fmt: skip
    unreachable = "BMC unreachable after 4 attempts: no answer"
    add_request(session, b, Action.ON, RequestStatus.FAILED, started_after_s=1.0,
                finished_after_s=31.0, error=unreachable)  # fmt: skip
    add_request(session, b, Action.OFF, RequestStatus.FAILED, started_after_s=0.5,
                finished_after_s=0.6, error="off failed: IPMI login at x as user 'u': "
                "credentials refused (incorrect password)")  # fmt: skip
    add_request(session, c, Action.OFF, RequestStatus.FAILED, started_after_s=0.1,
                finished_after_s=0.2, error="cannot drive BMC x: no such driver")  # fmt: skip
    add_request(session, c, Action.OFF, RequestStatus.CANCELLED, finished_after_s=5.0)
    # outstanding: a running, b pending, c held
    add_request(session, a, Action.CYCLE, RequestStatus.RUNNING, started_after_s=1.0)
    add_request(session, b, Action.OFF, RequestStatus.PENDING, dispatch_count=0)
    add_request(session, c, Action.ON, RequestStatus.PENDING, held=True, dispatch_count=0)
    now = session.scalar(select(func.now()))
    assert now is not None
    states = {
        # name: (observed, desired, read seconds ago, maintenance, fault)
        "a": (PowerState.ON, DesiredPowerState.OFF, 5, False, False),  # busy: not drift
        "d": (PowerState.OFF, DesiredPowerState.ON, 100, False, True),  # drift and fault
        "e": (PowerState.ON, DesiredPowerState.ON, 10, True, False),  # maintenance
        "f": (PowerState.UNKNOWN, DesiredPowerState.ON, 7200, True, False),  # old, in maintenance
    }
    for name, (observed, desired, ago, maintenance, fault) in states.items():
        node = nodes[name]
        node.power_state, node.desired_power_state = observed, desired
        node.power_state_at = now - timedelta(seconds=ago)
        node.maintenance, node.power_fault = maintenance, fault
    session.commit()
    return nodes


def test_requests_count_by_action_status_and_failure_kind(
    client: FlaskClient, reader: dict[str, str], history: dict[str, Node]
) -> None:
    samples = scrape(client, reader)

    assert value(samples, "powerq_requests_total", action="on", status="succeeded") == 2
    assert value(samples, "powerq_requests_total", action="on", status="failed") == 1
    assert value(samples, "powerq_requests_total", action="off", status="failed") == 2
    assert value(samples, "powerq_requests_total", action="off", status="cancelled") == 1
    # only finished requests: the running and pending ones (outstanding) are no series of
    # the counter, which would otherwise fall when they finish
    finished = {"succeeded", "failed", "cancelled"}
    statuses = {
        dict(labels)["status"] for name, labels in samples if name == "powerq_requests_total"
    }
    assert statuses == finished
    assert sum(v for (name, _), v in samples.items() if name == "powerq_requests_total") == 6
    assert value(samples, "powerq_request_failures_total", action="on", kind="unreachable") == 1
    assert value(samples, "powerq_request_failures_total", action="off", kind="auth") == 1
    assert value(samples, "powerq_request_failures_total", action="off", kind="driver") == 1
    assert value(samples, "powerq_bmc_errors_total", kind="unreachable") == 1
    assert value(samples, "powerq_bmc_errors_total", kind="auth") == 1
    assert value(samples, "powerq_bmc_errors_total", kind="rejected") == 0
    assert value(samples, "powerq_redispatches_total") == 2


def test_requests_total_only_rises_as_requests_finish(
    client: FlaskClient, reader: dict[str, str], history: dict[str, Node], session: Session
) -> None:
    def counts(samples: Samples) -> dict[frozenset[tuple[str, str]], float]:
        return {
            labels: v for (name, labels), v in samples.items() if name == "powerq_requests_total"
        }

    before = counts(scrape(client, reader))
    outstanding = session.scalars(
        select(PowerRequest).where(
            PowerRequest.status.in_([RequestStatus.PENDING, RequestStatus.RUNNING])
        )
    ).all()
    assert len(outstanding) == 3
    for request, status in zip(
        outstanding,
        (RequestStatus.SUCCEEDED, RequestStatus.FAILED, RequestStatus.CANCELLED),
        strict=True,
    ):
        request.status, request.held = status, False
        request.finished_at = T0 + timedelta(seconds=10)
    session.commit()
    after = counts(scrape(client, reader))

    assert all(after.get(labels, 0) >= n for labels, n in before.items()), (before, after)
    assert sum(after.values()) == sum(before.values()) + 3


def test_latency_histograms_have_known_buckets_sums_and_counts(
    client: FlaskClient, reader: dict[str, str], history: dict[str, Node]
) -> None:
    samples = scrape(client, reader)

    def bucket(metric: str, action: str, le: str) -> float:
        return value(samples, f"powerq_{metric}_bucket", action=action, le=le)

    # on: waits 0.2, 0.02 (succeeded) and 1.0 (failed); executions 2.8, 0.5 and 30
    assert bucket("request_queue_wait_seconds", "on", "0.025") == 1
    assert bucket("request_queue_wait_seconds", "on", "0.25") == 2
    assert bucket("request_queue_wait_seconds", "on", "1.0") == 3
    assert bucket("request_queue_wait_seconds", "on", "+Inf") == 3
    assert value(samples, "powerq_request_queue_wait_seconds_count", action="on") == 3
    assert value(samples, "powerq_request_queue_wait_seconds_sum", action="on") == pytest.approx(
        1.22
    )
    assert bucket("request_execution_seconds", "on", "0.5") == 1
    assert bucket("request_execution_seconds", "on", "5.0") == 2
    assert bucket("request_execution_seconds", "on", "20.0") == 2
    assert bucket("request_execution_seconds", "on", "30.0") == 3
    assert value(samples, "powerq_request_execution_seconds_sum", action="on") == pytest.approx(
        33.3
    )
    # only succeeded requests reach success: 3.0 and 0.52 after they were recorded
    assert bucket("request_to_success_seconds", "on", "0.5") == 0
    assert bucket("request_to_success_seconds", "on", "1.0") == 1
    assert bucket("request_to_success_seconds", "on", "+Inf") == 2
    assert value(samples, "powerq_request_to_success_seconds_sum", action="on") == pytest.approx(
        3.52
    )
    # off: two failures that ran (cancelled never started); no success
    assert value(samples, "powerq_request_execution_seconds_count", action="off") == 2
    assert ("powerq_request_to_success_seconds_count", frozenset({("action", "off")})) not in (
        samples
    )
    # a running request is not in any histogram
    assert ("powerq_request_execution_seconds_count", frozenset({("action", "cycle")})) not in (
        samples
    )


def test_outstanding_by_lane_and_node_health(
    client: FlaskClient, reader: dict[str, str], history: dict[str, Node]
) -> None:
    lanes = get_settings().lanes
    expected = {(str(lane), state): 0 for lane in range(lanes) for state in
                ("pending", "held", "running")}  # fmt: skip
    for name, state in (("a", "running"), ("b", "pending"), ("c", "held")):
        expected[(str(lane_for(name, lanes)), state)] += 1

    samples = scrape(client, reader)

    for (lane, state), n in expected.items():
        assert value(samples, "powerq_requests_outstanding", lane=lane, state=state) == n
    assert value(samples, "powerq_nodes") == 6
    assert value(samples, "powerq_nodes_power_fault") == 1
    assert value(samples, "powerq_nodes_drift") == 1  # d; a is busy, f unknown
    assert value(samples, "powerq_nodes_maintenance") == 2
    assert value(samples, "powerq_nodes_unobserved") == 2  # b and c (e, f: maintenance)
    age = value(samples, "powerq_oldest_observation_age_seconds")
    assert 100 <= age < 7200  # d's reading; f's is older but f is in maintenance


def test_lane_queue_depth_and_broker_up(
    client: FlaskClient, reader: dict[str, str], db: None
) -> None:
    broker = redis.Redis.from_url(celery_app.conf.broker_url)
    broker.lpush(lane_queue(1), b"x", b"y")

    samples = scrape(client, reader)

    assert value(samples, "powerq_broker_up") == 1
    assert value(samples, "powerq_lane_queue_depth", lane="0") == 0
    assert value(samples, "powerq_lane_queue_depth", lane="1") == 2


@pytest.mark.usefixtures("dead_broker")
def test_a_broker_that_is_down_is_a_metric_not_a_failed_scrape(
    client: FlaskClient, reader: dict[str, str], history: dict[str, Node]
) -> None:
    samples = scrape(client, reader)

    assert value(samples, "powerq_broker_up") == 0
    assert not [key for key in samples if key[0] == "powerq_lane_queue_depth"]
    assert value(samples, "powerq_requests_total", action="on", status="succeeded") == 2


def test_a_database_that_is_down_is_a_503_problem(
    client: FlaskClient, reader: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client.get("/metrics", headers=reader)  # the token is verified (and cached) first
    dead = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    monkeypatch.setattr("powerq.metrics.get_engine", lambda: dead)

    response = client.get("/metrics", headers=reader)

    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["status"] == 503


def test_metrics_need_a_token(client: FlaskClient, reader: dict[str, str]) -> None:
    anonymous = client.get("/metrics")
    wrong = client.get("/metrics", headers={"Authorization": "Bearer pq_not-a-token"})
    allowed = client.get("/metrics", headers=reader)

    for refused in (anonymous, wrong):
        assert refused.status_code == 401
        assert refused.content_type == "application/problem+json"
        assert refused.get_json()["status"] == 401
    assert allowed.status_code == 200


@pytest.fixture
def public_app(db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[APIFlask]:
    """The API with POWERQ_METRICS_PUBLIC=1."""
    monkeypatch.setenv("POWERQ_METRICS_PUBLIC", "1")
    app = create_app(Settings())
    app.testing = True
    yield app


def test_metrics_public_setting_opens_only_metrics(public_app: APIFlask) -> None:
    client = public_app.test_client()

    assert client.get("/metrics").status_code == 200
    assert client.get("/v1/nodes").status_code == 401


def test_metrics_are_in_the_openapi_document(client: FlaskClient) -> None:
    document = client.get("/v1/openapi.json").get_json()
    operation = document["paths"]["/metrics"]["get"]

    assert "text/plain" in operation["responses"]["200"]["content"]
    assert operation["security"] == [{"BearerAuth": ["reader"]}]
    assert "application/problem+json" in operation["responses"]["401"]["content"]


def test_openmetrics_on_request(client: FlaskClient, reader: dict[str, str]) -> None:
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    response = client.get("/metrics", headers={**reader, **accept})

    assert response.status_code == 200
    assert response.content_type.startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).endswith("# EOF\n")


def _grow(session: Session, nodes: int, requests_per_node: int) -> None:
    """Many nodes and finished requests, set-based."""
    session.execute(
        text(
            "INSERT INTO nodes (name, driver, bmc_address, bmc_port, bmc_username, "
            "bmc_password_encrypted) SELECT 'bulk-' || g, 'sim', '10.0.0.1', 10000 + g, 'u', "
            "'\\x00' FROM generate_series(1, :n) g"
        ),
        {"n": nodes},
    )
    session.execute(
        text(
            "INSERT INTO power_requests (node_id, action, status, deadline_s, requested_by, "
            "created_at, started_at, finished_at) "
            "SELECT n.id, 'on', 'succeeded', 60, 'bulk', now() - interval '10 s', "
            "now() - interval '9 s', now() FROM nodes n, generate_series(1, :k) "
            "WHERE n.name LIKE 'bulk-%'"
        ),
        {"k": requests_per_node},
    )
    session.execute(
        text(
            "INSERT INTO power_requests (node_id, action, status, deadline_s, requested_by) "
            "SELECT n.id, 'off', 'pending', 60, 'bulk' FROM nodes n WHERE n.name LIKE 'bulk-%'"
        )
    )
    session.commit()


def test_a_scrape_costs_three_statements_whatever_the_size(
    client: FlaskClient, reader: dict[str, str], history: dict[str, Node], session: Session
) -> None:
    client.get("/metrics", headers=reader)  # the token is verified (and cached) once
    with count_statements() as small:
        scrape(client, reader)
    _grow(session, nodes=200, requests_per_node=5)
    with count_statements() as large:
        samples = scrape(client, reader)

    assert len(small) == len(large) == 3, large
    assert value(samples, "powerq_requests_total", action="on", status="succeeded") == 1002


def test_read_snapshot_is_three_statements(history: dict[str, Node]) -> None:
    with count_statements() as seen:
        snapshot = read_snapshot(get_settings().lanes, broker=False)

    assert len(seen) == 3
    assert snapshot.lane_depths is None
    assert sum(snapshot.outstanding.values()) == 3


def test_unknown_failures_are_other(session: Session, client: FlaskClient,
                                    reader: dict[str, str]) -> None:  # fmt: skip
    node = make_node(session, "z")
    add_request(session, node, Action.ON, RequestStatus.FAILED, started_after_s=1,
                finished_after_s=2, error=f"something new {uuid.uuid4()}")  # fmt: skip

    samples = scrape(client, reader)

    assert value(samples, "powerq_request_failures_total", action="on", kind="other") == 1


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_dashboard_and_the_docs_name_only_exposed_metrics(
    client: FlaskClient, reader: dict[str, str], history: dict[str, Node]
) -> None:
    exposed = {name for name, _ in scrape(client, reader)}
    dashboard = json.loads((DOCS / "grafana-powerq.json").read_text())
    used = set(re.findall(r"\bpowerq_[a-z_]+", json.dumps(dashboard)))
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exposed}
    documented = set(re.findall(r"`(powerq_[a-z_]+)`", (DOCS / "metrics.md").read_text()))

    assert used and used <= exposed, used - exposed
    assert families <= documented | {name.removesuffix("_total") for name in documented}
    assert documented <= families | exposed, documented - families - exposed


_TARGET = BmcTarget("ipmi", "10.0.0.9", 623, "admin", "hunter2")


def _ipmi(reason: str) -> str:
    return str(ipmi_errors.from_exception(Exception(reason), _TARGET, "login"))


# What the executor, the sweeper and a batch deadline write (through their own
# message builders where they are public), and the kind each is counted as.
FAILURE_TEXTS: list[tuple[str, str]] = [
    (f"BMC unreachable after 5 attempts: {_ipmi('timed out')}", "unreachable"),
    (f"on failed: {_ipmi('Incorrect password provided')}", "auth"),
    (f"on failed: {_ipmi('did not accept cipher suite 17')}", "protocol"),
    (f"on failed: {ipmi_errors.from_response({'code': 0xD5}, _TARGET, 'power on')}", "rejected"),
    (verify.expired_message(Action.OFF, PowerState.ON, 120.0), "deadline"),
    ("on not verified by its deadline (120s): no worker could check it for 5 minutes", "deadline"),
    ("not started before its batch's deadline (2026-01-01T00:00:00Z)", "not_started"),
    ("cannot drive BMC 10.0.0.9:623: redfish is not enabled", "driver"),
    ("reset was sent once to 10.0.0.9:623 and its answer is unknown (x)", "unknown_outcome"),
    ("the BMC reports boot device disk after pxe was set", "boot_device"),
    ("something nobody wrote a pattern for", "other"),
]  # fmt: skip


def test_failure_kinds_of_the_texts_powerq_writes(session: Session) -> None:
    for i, (error, _) in enumerate(FAILURE_TEXTS):
        node = make_node(session, f"k{i}")
        add_request(session, node, Action.ON, RequestStatus.FAILED, error=error,
                    started_after_s=1, finished_after_s=2)  # fmt: skip
    expected: dict[str, int] = {}
    for _, kind in FAILURE_TEXTS:
        expected[kind] = expected.get(kind, 0) + 1

    snapshot = read_snapshot(get_settings().lanes, broker=False)

    assert {kind: n for (_, kind), n in snapshot.failures.items()} == expected


def test_lane_ownership_is_exposed_per_lane(
    client: FlaskClient, reader: dict[str, str], session: Session
) -> None:
    from powerq.agent import leases as lane_leases
    from powerq.agent.leases import Identity

    host = Identity("host-a", uuid.uuid4(), 1, True)
    lane_leases.heartbeat(host, lease_s=30)
    lane_leases.acquire(host, [0], lease_s=30)

    samples = scrape(client, reader)

    assert value(samples, "powerq_agents") == 1
    assert value(samples, "powerq_lane_held", lane="0", agent="host-a") == 1
    assert value(samples, "powerq_lane_held", lane="1", agent="") == 0
