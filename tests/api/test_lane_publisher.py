"""send_step's lean publish puts on the lane exactly what Celery's ``send_task``
would (same headers, properties and body framing), follows the app's broker URL,
and says OperationalError when the broker is down. Its ``kwargsrepr`` shows the
node and action (Flower), never anything else; its arguments stay the id."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError

from powerq.config import get_settings
from powerq.tasks.app import app as celery_app
from powerq.tasks.dispatch import STEP_TASK, _publisher, send_step
from powerq.tasks.routing import lane_for, lane_queue
from powerq.tasks.stepmessage import step_kwargsrepr
from tests.api.conftest import point_broker_at

NODE = "node-1"
# Differ from one message to the next by nature.
_PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag", "eta"}
_REPRS = {"argsrepr", "kwargsrepr"}


@pytest.fixture
def broker(services: Any, db: None) -> Iterator[redis.Redis]:
    """The Celery app on a private database of the suite's Redis (restored after):
    the suite's own is shared with lane workers, which could take a message
    between push and pop."""
    url = services.spare_broker_url
    original = celery_app.conf.broker_url
    point_broker_at(url)
    client = redis.Redis.from_url(url)
    client.delete(_queue())
    try:
        yield client
    finally:
        client.delete(_queue())
        point_broker_at(original)


def _queue() -> str:
    return lane_queue(lane_for(NODE, get_settings().lanes))


def _pop(broker: redis.Redis) -> dict[str, Any]:
    raw = broker.rpop(_queue())
    assert raw is not None, "nothing on the lane"
    message: dict[str, Any] = json.loads(raw)
    return message


def _masked(message: dict[str, Any]) -> dict[str, Any]:
    def mask(part: dict[str, Any]) -> dict[str, Any]:
        return {k: ("…" if k in _PER_MESSAGE else v) for k, v in part.items()}

    # send_task also copies the reprs it was given into the properties; a worker
    # and Flower read them from the headers.
    properties = {k: v for k, v in message["properties"].items() if k not in _REPRS}
    return {**message, "headers": mask(message["headers"]), "properties": mask(properties)}


@pytest.mark.parametrize("countdown", [None, 2.5])
def test_the_message_is_the_one_send_task_would_publish(
    broker: redis.Redis, countdown: float | None
) -> None:
    request_id = uuid.uuid4()
    queue = _queue()
    shown = step_kwargsrepr(NODE, "cycle")
    celery_app.send_task(STEP_TASK, args=[str(request_id)], queue=queue, routing_key=queue,
                         countdown=countdown, kwargsrepr=shown)  # fmt: skip
    theirs = _pop(broker)
    send_step(request_id, NODE, action="cycle", countdown=countdown)
    ours = _pop(broker)

    assert _masked(ours) == _masked(theirs)
    assert (ours["headers"]["eta"] is None) is (countdown is None)
    args, kwargs, _ = json.loads(base64.b64decode(ours["body"]))
    assert (args, kwargs) == ([str(request_id)], {})
    assert ours["headers"]["kwargsrepr"] == "{'node': 'node-1', 'action': 'cycle'}"


@pytest.mark.parametrize("name", ["node-1", "n.2_x", "Z"])
def test_the_template_shows_any_node_name_exactly(broker: redis.Redis, name: str) -> None:
    request_id = uuid.uuid4()
    queue = lane_queue(lane_for(name, get_settings().lanes))
    broker.delete(queue)
    send_step(request_id, name, action="off")
    raw = broker.rpop(queue)
    assert raw is not None
    headers = json.loads(raw)["headers"]

    assert headers["kwargsrepr"] == repr({"node": name, "action": "off"})
    assert headers["argsrepr"] == repr([str(request_id)])


def test_without_an_action_only_the_node_is_shown() -> None:
    assert step_kwargsrepr("n1", None) == "{'node': 'n1'}"


def test_it_follows_the_broker_url_and_reports_a_dead_broker(
    broker: redis.Redis, dead_broker: None
) -> None:
    started = time.monotonic()
    with pytest.raises(OperationalError):
        send_step(uuid.uuid4(), NODE)
    assert time.monotonic() - started < 5
    assert broker.llen(_queue()) == 0


def test_a_pooled_connection_the_broker_dropped_costs_no_publish(broker: redis.Redis) -> None:
    send_step(uuid.uuid4(), NODE)
    _, client = _publisher._open()
    broker.client_kill_filter(_id=client.client_id())  # only the publisher's own connection

    send_step(uuid.uuid4(), NODE)

    assert broker.llen(_queue()) == 2


def _send_task_then_send_step(broker: redis.Redis) -> tuple[dict[str, Any], dict[str, Any]]:
    """What send_task and send_step put on the lane for one request, from this thread."""
    request_id = uuid.uuid4()
    queue = _queue()
    celery_app.send_task(STEP_TASK, args=[str(request_id)], queue=queue, routing_key=queue,
                         kwargsrepr=step_kwargsrepr(NODE, None))  # fmt: skip
    theirs = _pop(broker)
    send_step(request_id, NODE)
    return theirs, _pop(broker)


def test_the_template_fills_in_each_thread_s_reply_to(broker: redis.Redis) -> None:
    send_step(uuid.uuid4(), NODE)  # the lane's template, made in this thread
    _pop(broker)
    pair: list[tuple[dict[str, Any], dict[str, Any]]] = []
    other = threading.Thread(target=lambda: pair.append(_send_task_then_send_step(broker)))
    other.start()
    other.join()

    theirs, ours = pair[0]
    assert _masked(ours) == _masked(theirs)
    assert ours["properties"]["reply_to"] == theirs["properties"]["reply_to"]
    assert ours["properties"]["reply_to"] != celery_app.thread_oid


def test_celery_builds_a_lane_s_step_message_once(
    broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = 0
    create = celery_app.amqp.create_task_message

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal built
        built += 1
        return create(*args, **kwargs)

    _publisher.reset()
    monkeypatch.setattr(celery_app.amqp, "create_task_message", counted)
    ids = [uuid.uuid4() for _ in range(5)]
    for request_id in ids:
        send_step(request_id, NODE)

    assert built == 1
    messages = [_pop(broker) for _ in ids]
    assert [json.loads(base64.b64decode(m["body"]))[0] for m in messages] == [[str(i)] for i in ids]
    assert [m["headers"]["argsrepr"] for m in messages] == [repr([str(i)]) for i in ids]
    for field in ("id", "root_id"):
        assert len({m["headers"][field] for m in messages}) == 5
    for field in ("correlation_id", "delivery_tag"):
        assert len({m["properties"][field] for m in messages}) == 5
    assert all(m["headers"]["id"] == m["properties"]["correlation_id"] for m in messages)
