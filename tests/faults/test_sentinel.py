"""Broker high availability: Redis Sentinel, with the primary SIGKILLed mid-batch.

Real processes on loopback: a primary, its replica and three sentinels (all
``redis-server``), the simulated IPMI fleet, one worker per lane, the control
worker and beat, all given ``POWERQ_BROKER_URL=sentinel://…;sentinel://…``
and ``POWERQ_BROKER_MASTER_NAME``, and the API served over real HTTP in this
process. Half the fleet is asked to power off, the primary is killed while
those run, the other half is asked while the sentinels have not yet promoted
the replica (the API must still answer 202: the intent is in PostgreSQL, the
wake-up is left to the sweeper), then every node is asked to power on once
the replica is the primary. Every request must succeed and every BMC must
have executed exactly one power-down and one power-up: nothing accepted is
lost and nothing is done twice. Deadlines are hang guards, not assertions.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import requests
from kombu.exceptions import OperationalError

from powerq.api import create_app
from powerq.api.health import broker_check
from powerq.bmc.simfleet.launcher import SimFleetProcess
from powerq.broker import sentinel_transport_options
from powerq.config import load_settings
from powerq.db import session_scope
from powerq.errors import ConfigError
from powerq.metrics import lane_depths
from powerq.states import Action, RequestStatus
from powerq.tasks.app import app
from powerq.tasks.dispatch import _publisher
from powerq.tasks.routing import lane_queue
from powerq.tokens import create_token
from tests.api.helpers import live_server
from tests.faults.conftest import FaultStack, _environment
from tests.faults.sentinel import MASTER_NAME, SentinelGroup

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.ipmi]

NODES = 20
HTTP_TIMEOUT_S = 10.0


class SentinelStack:
    """A :class:`FaultStack` on a Sentinel group, and the API over HTTP."""

    def __init__(self, stack: FaultStack, group: SentinelGroup, api_url: str, token: str) -> None:
        self.stack = stack
        self.group = group
        self.api_url = api_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.undispatched: list[uuid.UUID] = []

    def post_power(self, name: str, action: Action) -> uuid.UUID:
        """``POST /v1/nodes/NAME/power`` as a client does; return the new request's id
        (and note in :attr:`undispatched` the ones whose lane could not be woken).

        :raises AssertionError: the API did not answer 202.
        """
        response = requests.post(
            f"{self.api_url}/v1/nodes/{name}/power",
            json={"action": action.value},
            headers=self.headers,
            timeout=HTTP_TIMEOUT_S,
        )
        assert response.status_code == 202, (name, response.status_code, response.text)
        body = response.json()
        request_id = uuid.UUID(body["request"]["id"])
        if not body["dispatched"]:
            self.undispatched.append(request_id)
        return request_id


@pytest.fixture
def sentinel_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: None
) -> Iterator[SentinelStack]:
    """Sentinel group, fleet, lane workers, control worker, beat and a live API."""
    group = SentinelGroup(tmp_path / "redis")
    environment = _environment(
        monkeypatch, group.url, None, {"POWERQ_BROKER_MASTER_NAME": MASTER_NAME}
    )
    fleet = SimFleetProcess(count=NODES, transition=1.0, soft_delay=2.0)
    stack: FaultStack | None = None
    entered = False
    try:
        group.start()
        environment.__enter__()
        entered = True
        fleet.start()
        for row in fleet.manifest:
            fleet.control.set_power(row["name"], "on")
        fleet.control.reset_logs()
        stack = FaultStack(fleet, tmp_path, group.primary, None)
        stack.register_fleet()
        stack.start_workers()
        stack.start_scheduler()
        with session_scope() as session:
            _, token = create_token(session, role="operator", name="sentinel-test")
        with live_server(create_app()) as url:
            yield SentinelStack(stack, group, url, token)
    finally:
        if stack is not None:
            stack.stop()
        fleet.stop()
        if entered:
            environment.__exit__(None, None, None)
        group.stop()


def test_primary_sigkilled_mid_batch_loses_nothing(sentinel_stack: SentinelStack) -> None:
    s, group = sentinel_stack.stack, sentinel_stack.group
    names = [row["name"] for row in s.fleet.manifest]
    first, second = names[: NODES // 2], names[NODES // 2 :]
    old_primary = group.primary.port

    ids = [sentinel_stack.post_power(name, Action.OFF) for name in first]
    in_flight = [
        r for r in s.requests(ids).values()
        if r.status in (RequestStatus.PENDING, RequestStatus.RUNNING)
    ]  # fmt: skip
    assert in_flight, "the kill would hit nothing: every request already finished"

    killed_at = time.monotonic()
    group.kill_primary()
    health = requests.get(f"{sentinel_stack.api_url}/healthz", timeout=HTTP_TIMEOUT_S)
    assert health.status_code == 200, health.text  # degraded at worst: PostgreSQL answers
    # The API keeps accepting while the sentinels have not failed over yet.
    during, asked_before_promotion = [], 0
    for name in second:
        during.append(sentinel_stack.post_power(name, Action.OFF))
        named = [sentinel.master_port() for sentinel in group.sentinels]
        asked_before_promotion += old_primary in named
    ids += during
    left_for_sweeper = set(sentinel_stack.undispatched) & set(during)
    group.wait_promoted()
    promotion_s = time.monotonic() - killed_at
    assert group.replica.port != old_primary
    assert asked_before_promotion, "the sentinels failed over before the API was asked anything"
    assert left_for_sweeper, "no publish failed: the API never met the dead primary"

    _all_succeeded(s, ids)
    off_done_after = time.monotonic() - killed_at

    # After the failover: API, lanes, control worker and beat all on the new primary.
    on_ids = [sentinel_stack.post_power(name, Action.ON) for name in names]
    missed = set(sentinel_stack.undispatched) & set(on_ids)
    assert not missed, f"{len(missed)} publishes after the failover did not reach the new primary"
    _all_succeeded(s, on_ids)

    # Every other Redis reader of powerq follows the sentinels too.
    health = requests.get(f"{sentinel_stack.api_url}/healthz", timeout=HTTP_TIMEOUT_S)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    assert lane_depths(s.lanes) is not None  # /metrics' queue depths
    assert s.lanes - 1 in _backlogged_after_ring(s.lanes - 1)  # the sweeper's backlog read

    for name in names:
        actions = [str(entry["action"]) for entry in s.power_commands(name)]
        assert actions == ["power_down", "power_up"], (name, actions)
    s.assert_clean_run(ids + on_ids)
    print(f"\npromoted {promotion_s:.1f}s, every off done {off_done_after:.1f}s after the kill")


def _all_succeeded(stack: FaultStack, ids: list[uuid.UUID], timeout: float = 120) -> None:
    finished = stack.wait_finished(ids, timeout=timeout)
    failed = [(r.id, r.error) for r in finished.values() if r.status != RequestStatus.SUCCEEDED]
    assert not failed, failed[:5]


def _backlogged_after_ring(lane: int) -> set[int]:
    """What the sweeper's backlog read says of ``lane`` while its list holds a
    message (under a queue name no worker consumes, so it stays there)."""
    from powerq.tasks import sweeper

    key = f"sentinel-test.lane.{lane}"
    with app.connection_for_write() as connection:
        client = connection.default_channel.client
        client.lpush(key, "{}")
        try:
            with mock.patch.object(sweeper, "lane_queue", lambda _: key):
                return sweeper.backlogged_lanes({lane})
        finally:
            client.delete(key)


def test_lane_publisher_fails_fast_then_reaches_the_promoted_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's publisher alone: while the sentinels still name the dead primary
    a publish raises (the caller leaves the request to the sweeper) rather than
    hanging; the first publish after the promotion lands on the new primary."""
    group = SentinelGroup(tmp_path / "redis")
    environment = _environment(
        monkeypatch, group.url, None, {"POWERQ_BROKER_MASTER_NAME": MASTER_NAME}
    )
    try:
        group.start()
        environment.__enter__()
        queue = lane_queue(0)
        _publisher.publish_step(queue, str(uuid.uuid4()))
        assert group.primary.client().llen(queue) == 1

        group.kill_primary()
        failures, landed = 0, 0
        deadline = time.monotonic() + 60  # hang guard: wait_promoted below says why
        while time.monotonic() < deadline and not all(
            s.master_port() == group.replica.port for s in group.sentinels
        ):
            time.sleep(0.02)
            request_id = str(uuid.uuid4())
            try:
                _publisher.publish_step(queue, request_id)
            except OperationalError:
                failures += 1  # the caller leaves the request to the sweeper
                continue
            # some sentinel already names the promoted replica: it must be there
            messages = group.replica.client().lrange(queue, 0, -1)
            assert any(request_id.encode() in message for message in messages)
            landed += 1
        assert failures, "the sentinels failed over before a publish was tried"
        group.wait_promoted()

        request_id = str(uuid.uuid4())
        _publisher.publish_step(queue, request_id)
        messages = group.replica.client().lrange(queue, 0, -1)
        assert any(request_id.encode() in message for message in messages)
        print(f"\n{failures} publishes refused during the failover, {landed} landed early")
    finally:
        environment.__exit__(None, None, None)
        group.stop()


@pytest.mark.parametrize("sentinel_password", ["s3ntinel", "wrong"])
def test_passwords_of_the_primary_and_of_the_sentinels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sentinel_password: str
) -> None:
    """The primary's password from the URL, the sentinels' own from
    POWERQ_BROKER_SENTINEL_PASSWORD: /healthz's broker check and the lane
    publisher reach the primary with the right one, and not with a wrong one."""
    group = SentinelGroup(tmp_path / "redis", password="prim4ry", sentinel_password="s3ntinel")
    environment = _environment(
        monkeypatch, group.url, None,
        {"POWERQ_BROKER_MASTER_NAME": MASTER_NAME,
         "POWERQ_BROKER_SENTINEL_PASSWORD": sentinel_password},
    )  # fmt: skip
    try:
        group.start()
        environment.__enter__()
        right = sentinel_password == "s3ntinel"
        assert broker_check().ok is right
        if right:
            _publisher.publish_step(lane_queue(0), str(uuid.uuid4()))
            assert group.primary.client().llen(lane_queue(0)) == 1
        else:
            with pytest.raises(OperationalError):
                _publisher.publish_step(lane_queue(0), str(uuid.uuid4()))
    finally:
        environment.__exit__(None, None, None)
        group.stop()


class _HangingUp:
    """A TCP listener that accepts and at once closes every connection, counting
    them: a sentinel that is there but broken (a redis-py client retries it)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = int(self.server.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


def test_a_broken_first_sentinel_is_asked_once_then_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py retries a failed command three times with a 1, 2, 4 s backoff by
    default; a sentinel listed first that hangs up must cost one connection per
    question, not four (then seconds per new kombu channel: the API's publisher
    after any broker error, /healthz, every worker reconnecting)."""
    group = SentinelGroup(tmp_path / "redis")
    broken = _HangingUp()
    environment = _environment(
        monkeypatch, f"sentinel://127.0.0.1:{broken.port};{group.url}", None,
        {"POWERQ_BROKER_MASTER_NAME": MASTER_NAME},
    )  # fmt: skip
    try:
        group.start()
        environment.__enter__()
        assert broker_check().ok
        asked = broken.accepted
        _publisher.publish_step(lane_queue(0), str(uuid.uuid4()))
        assert group.primary.client().llen(lane_queue(0)) == 1
        assert 1 <= asked <= 2, f"/healthz connected {asked} times to the broken sentinel"
    finally:
        environment.__exit__(None, None, None)
        broken.close()
        group.stop()


SENTINELS = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380;sentinel://127.0.0.1:26381"


def test_sentinel_settings_become_kombu_transport_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POWERQ_BROKER_URL", SENTINELS)
    monkeypatch.setenv("POWERQ_BROKER_MASTER_NAME", "mymaster")
    settings = load_settings()
    assert settings.broker_url == SENTINELS
    options = sentinel_transport_options(settings)
    assert options["master_name"] == "mymaster"
    asking = options["sentinel_kwargs"]
    assert asking["retry"].get_retries() == 0  # see the broken-sentinel test
    assert asking["socket_timeout"] > 0 and asking["socket_connect_timeout"] > 0
    assert "password" not in asking

    monkeypatch.setenv("POWERQ_BROKER_SENTINEL_PASSWORD", "s3cret")
    options = sentinel_transport_options(load_settings())
    assert options["sentinel_kwargs"]["password"] == "s3cret"

    monkeypatch.setenv("POWERQ_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.delenv("POWERQ_BROKER_MASTER_NAME")
    assert sentinel_transport_options(load_settings()) == {}


@pytest.mark.parametrize(
    ("url", "master", "says"),
    [
        (SENTINELS, None, "POWERQ_BROKER_MASTER_NAME must be set"),
        ("redis://127.0.0.1:6379/0", "mymaster", "only meaningful with a sentinel://"),
        ("sentinel://127.0.0.1:26379;redis://127.0.0.1:6379", "m", "every ';'-separated part"),
    ],
)
def test_malformed_sentinel_settings_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, url: str, master: str | None, says: str
) -> None:
    monkeypatch.setenv("POWERQ_BROKER_URL", url)
    if master is None:
        monkeypatch.delenv("POWERQ_BROKER_MASTER_NAME", raising=False)
    else:
        monkeypatch.setenv("POWERQ_BROKER_MASTER_NAME", master)
    with pytest.raises(ConfigError, match=says):
        load_settings()
