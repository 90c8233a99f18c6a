"""Ringing a node's lane: send ``powerq.step`` with the request id, after commit.

Redis only carries wake-ups. If it is unreachable the intent is still durable
in PostgreSQL and the sweeper dispatches it later, so a failed send is logged
and reported (``False``), never raised to the user.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

from kombu import serialization
from kombu.entity import PERSISTENT_DELIVERY_MODE
from kombu.exceptions import OperationalError
from kombu.utils.json import dumps as json_dumps
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from sqlalchemy import update

from powerq.config import get_settings
from powerq.db import session_scope, utcnow
from powerq.models import PowerRequest
from powerq.tasks.app import app
from powerq.tasks.routing import lane_for, lane_queue
from powerq.tasks.stepmessage import StepTemplate, step_kwargsrepr

log = logging.getLogger(__name__)

STEP_TASK = "powerq.step"
# One quick retry covers a dropped pooled connection; a broker that is down
# stays down for longer than a user should wait for a 202.
_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0.0, "interval_step": 0.2}


def send_step(
    request_id: uuid.UUID,
    node_name: str,
    *,
    action: str | None = None,
    countdown: float | None = None,
    continuing: int | None = None,
    parked_until: str | None = None,
) -> None:
    """Publish one ``powerq.step`` for ``request_id`` on ``node_name``'s lane
    (``continuing``, ``parked_until``: the parked attempt this message
    continues, and the lease it was parked with). The node and ``action`` (if
    the caller knows it) are only shown, in ``kwargsrepr`` (Flower, worker
    logs); the message's arguments stay the ids.

    :raises kombu.exceptions.OperationalError: the broker cannot be reached.
    """
    queue = lane_queue(lane_for(node_name, get_settings().lanes))
    kwargsrepr = step_kwargsrepr(node_name, action)
    if countdown is None and continuing is None and not app.conf.task_send_sent_event:
        _publisher.publish_step(queue, str(request_id), kwargsrepr)  # the common ring
        return
    args: list[Any] = [str(request_id)]
    if continuing is not None:
        args += [continuing, parked_until]
    if app.conf.task_send_sent_event:  # Flower asked for events: Celery's own path sends them
        app.send_task(STEP_TASK, args=args, queue=queue, routing_key=queue,
                      countdown=countdown, retry=True, retry_policy=_PUBLISH_RETRY,
                      argsrepr=repr(args), kwargsrepr=kwargsrepr)  # fmt: skip
        return
    message = app.amqp.create_task_message(
        str(uuid.uuid4()),
        STEP_TASK,
        args,
        {},
        countdown=countdown,
        reply_to=app.thread_oid,
        ignore_result=None,
        argsrepr=repr(args),  # what Celery's saferepr makes of an id (and an int), for less
        kwargsrepr=kwargsrepr,
    )
    _publisher.publish(queue, message.headers, message.properties, message.body)


class _LanePublisher:
    """How one process puts step messages on the lanes, cheaply.

    ``app.send_task`` costs ~1,500 Python calls per message: routing, option
    merging, a producer from the pool, kombu's retry wrapper and a new Redis
    client object per publish. Here Celery still builds the message
    (:meth:`celery.app.amqp.AMQP.create_task_message`: the same protocol-2
    headers a worker reads) and kombu's own Redis channel still frames it
    (serialisation, body encoding, delivery info: the same bytes a consumer
    expects; ``tests/api/test_lane_publisher.py`` compares them with
    ``send_task``'s), but one channel and one Redis client are kept per
    process and broker URL, and the push is one LPUSH, retried once (a pooled
    connection Redis dropped). A step at once for one request id is not even
    built by Celery each time: it fills in the lane's
    :class:`~powerq.tasks.stepmessage.StepTemplate`, made once per queue with
    the same channel.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._url: tuple[str, str | None] | None = None
        self._connection: Any = None
        self._channel: Any = None
        self._client: Any = None
        self._templates: dict[str, StepTemplate] = {}

    def publish_step(self, queue: str, request_id: str, kwargsrepr: str = "{}") -> None:
        """LPUSH a ``powerq.step`` for ``request_id`` (no countdown) onto ``queue``'s list
        (``kwargsrepr``: what Flower shows as its keyword arguments).

        :raises kombu.exceptions.OperationalError: the broker cannot be reached.
        """
        try:
            channel, client = self._open()
            template = self._templates.get(queue)
            if template is None:
                template = self._templates[queue] = StepTemplate.build(channel, queue, STEP_TASK)
            message = template.render(request_id, app.thread_oid, kwargsrepr)
            self._lpush(client, template.key, message)
        except (RedisError, OSError) as exc:
            self.reset()
            raise OperationalError(str(exc)) from exc

    def publish(
        self, queue: str, headers: dict[str, Any], properties: dict[str, Any], body: Any
    ) -> None:
        """LPUSH one Celery message onto ``queue``'s list.

        :raises kombu.exceptions.OperationalError: the broker cannot be reached.
        """
        try:
            self._push(queue, headers, properties, body)
        except (RedisError, OSError) as exc:
            self.reset()
            raise OperationalError(str(exc)) from exc

    def _push(
        self, queue: str, headers: dict[str, Any], properties: dict[str, Any], body: Any
    ) -> None:
        channel, client = self._open()
        serialized = serialization.dumps(body, serializer="json")  # type: ignore[no-untyped-call]
        content_type, content_encoding, payload = serialized
        properties = {**properties, "delivery_mode": PERSISTENT_DELIVERY_MODE}
        message = channel.prepare_message(
            payload, 0, content_type, content_encoding, headers, properties
        )
        channel._inplace_augment_message(message, "", queue)
        key = channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False))
        self._lpush(client, key, json_dumps(message))  # type: ignore[no-untyped-call]

    @staticmethod
    def _lpush(client: Any, key: str, data: str) -> None:
        """:raises RedisError: also on a second try (the first on a dropped connection)."""
        try:
            client.lpush(key, data)
        except RedisConnectionError:
            client.lpush(key, data)  # once more, on a fresh connection

    def _open(self) -> tuple[Any, Any]:
        """The channel and client for the app's current broker URL (opened on first use).

        With Redis Sentinel (``sentinel://`` URLs) the client's pool is kombu's
        sentinel-managed one: every new connection asks the sentinels where the
        primary is. After the primary dies, the pooled connection fails, the
        retry in :meth:`_lpush` opens a new one to whatever the sentinels name
        (the promoted replica, or the dead primary until they have failed
        over: then it is refused at once and the request is left for the
        sweeper; ``tests/faults/test_sentinel.py``).
        """
        url = (app.conf.broker_url, app.conf.broker_transport_options.get("master_name"))
        with self._lock:
            if self._client is None or self._url != url:
                self._close()
                self._connection = app.connection_for_write()
                self._channel = self._connection.channel()
                self._client = self._channel.Client(connection_pool=self._channel.pool)
                self._url = url
            return self._channel, self._client

    def reset(self) -> None:
        """Forget the channel and client (the next publish opens new ones)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        self._templates = {}
        connection, self._connection = self._connection, None
        self._channel = self._client = self._url = None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.release()


_publisher = _LanePublisher()


def dispatch_request(request_id: uuid.UUID, node_name: str, action: str | None = None) -> bool:
    """Wake the lane for a committed request and note when it was dispatched
    (``action``: shown with the node in Flower, see :func:`send_step`).

    Never raises: returns False (and logs why) when the message could not be
    sent; the sweeper dispatches the request later. Call only after the intent
    has committed.
    """
    try:
        send_step(request_id, node_name, action=action)
    except Exception as exc:  # any broker or transport error: the intent is durable
        log.warning("broker unreachable, request %s left for the sweeper: %s", request_id, exc)
        return False
    try:
        mark_dispatched([request_id])
    except Exception as exc:  # sent, but not noted: the sweeper may ring once more (fenced)
        log.warning("request %s sent but dispatched_at not recorded: %s", request_id, exc)
    return True


def ring_marked(
    request_id: uuid.UUID, node_name: str, marked_at: datetime, action: str | None = None
) -> bool:
    """Wake the lane for a committed request already written as dispatched at
    ``marked_at`` (in the statement that recorded it; ``action``: shown with the
    node in Flower, see :func:`send_step`).

    Never raises: when the message cannot be sent, the mark is taken back (so
    the sweeper dispatches the request at its next pass) and False returned.
    """
    try:
        send_step(request_id, node_name, action=action)
    except Exception as exc:  # any broker or transport error: the intent is durable
        log.warning("broker unreachable, request %s left for the sweeper: %s", request_id, exc)
        _unmark(request_id, marked_at)
        return False
    return True


def _unmark(request_id: uuid.UUID, marked_at: datetime) -> None:
    """Take back the dispatch mark written at ``marked_at``, unless someone dispatched
    the request since. Best effort: if the database is unreachable too, the sweeper
    re-rings the request once the mark is stale (``POWERQ_REDISPATCH_AFTER_S``)."""
    try:
        with session_scope() as session:
            session.execute(
                update(PowerRequest)
                .where(PowerRequest.id == request_id, PowerRequest.dispatched_at == marked_at)
                .values(dispatched_at=None, dispatch_count=PowerRequest.dispatch_count - 1)
            )
    except Exception as exc:  # any error: logged, and the sweeper still finds the request
        log.warning("could not take back the dispatch mark of request %s: %s", request_id, exc)


def mark_dispatched(request_ids: list[uuid.UUID]) -> None:
    """Record that the requests were sent to their lanes (one short transaction)."""
    if not request_ids:
        return
    with session_scope() as session:
        session.execute(
            update(PowerRequest)
            .where(PowerRequest.id.in_(request_ids))
            .values(
                dispatched_at=utcnow(),
                dispatch_count=PowerRequest.dispatch_count + 1,
            )
        )


class StepMessage(NamedTuple):
    """One ``powerq.step`` to publish: the request, its node (for the lane),
    seconds to hold it back (None: at once), and its action if known (shown in
    Flower with the node)."""

    request_id: uuid.UUID
    node_name: str
    countdown: float | None = None
    action: str | None = None


def send_steps(messages: Iterable[StepMessage]) -> int:
    """Publish many ``powerq.step`` messages through one producer, buffered and
    sent as one Redis pipeline (kombu's ``Producer.batch``; transports without
    batches publish one by one); return how many went out.

    Never raises: when the broker fails, nothing is counted as sent (a failed
    pipeline may have delivered part of it: a duplicate ring is harmless, the
    claim is fenced) and the requests are left, logged, to the sweeper, which
    re-rings a request once its ``dispatched_at`` is stale. Call only after the
    requests have committed.
    """
    lanes = get_settings().lanes
    queued = 0
    try:
        with app.producer_or_acquire() as producer, producer.batch():
            for message in messages:
                queue = lane_queue(lane_for(message.node_name, lanes))
                args = [str(message.request_id)]
                app.send_task(
                    STEP_TASK,
                    args=args,
                    queue=queue,
                    routing_key=queue,
                    countdown=message.countdown,
                    producer=producer,
                    retry=True,
                    retry_policy=_PUBLISH_RETRY,
                    argsrepr=repr(args),
                    kwargsrepr=step_kwargsrepr(message.node_name, message.action),
                )
                queued += 1
    except Exception as exc:  # any broker or transport error: the intents are durable
        log.warning("broker failed publishing %d step(s), left for the sweeper: %s", queued, exc)
        return 0
    return queued
