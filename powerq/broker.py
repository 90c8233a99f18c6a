"""What powerq adds to kombu's Redis transport: Redis Sentinel settings.

``POWERQ_BROKER_URL=sentinel://h1:26379;sentinel://h2:26379;sentinel://h3:26379``
with ``POWERQ_BROKER_MASTER_NAME`` makes every Redis client of powerq (Celery's
workers and beat, the API's lane publisher, the sweeper's and metrics' queue
lengths, ``/healthz``) ask the sentinels where the primary is, and ask again
after a connection to it fails: after a failover they reach the promoted
replica. See docs/high-availability.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from redis.backoff import NoBackoff
from redis.retry import Retry

from powerq.config import Settings

# Sentinels answer in microseconds on a sane network; a dead one must not hold
# up the question to the next (redis-py asks them in turn, in the URL's order).
SENTINEL_SOCKET_TIMEOUT_S = 1.0


def is_sentinel_url(url: str | None) -> bool:
    """Whether ``url`` names Redis Sentinels (``sentinel://h1:p1;sentinel://h2:p2``)."""
    return bool(url) and str(url).startswith("sentinel://")


def sentinel_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu transport options for ``settings``' broker: empty unless it is Sentinel.

    With sentinels: the master name, and how to ask the sentinels
    (``sentinel_kwargs``: their own password if they need one, short socket
    timeouts, and **no retries**). redis-py's client retries a failed command
    three times with a backoff of 1, 2, 4 s by default, and asks the sentinels
    in the URL's order with a new client for every kombu channel: with the
    first sentinel down, every new channel (the API's publisher after any
    broker error, a worker reconnecting, ``/healthz``) waited ~7 s before
    asking the second. Without retries a dead sentinel costs one refused
    connection (or one timeout) and the next is asked at once.
    """
    if not is_sentinel_url(settings.broker_url):
        return {}
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.broker_sentinel_password:
        sentinel_kwargs["password"] = settings.broker_sentinel_password
    return {"master_name": settings.broker_master_name, "sentinel_kwargs": sentinel_kwargs}


@contextlib.contextmanager
def bounded_connection(timeout_s: float) -> Iterator[Any]:
    """A connection to the broker, made within ``timeout_s`` (connect and every
    socket operation bounded, one try), for a quick question such as a health
    check or queue lengths; closed after.

    :raises Exception: any transport error (kombu's, redis-py's, OSError):
        callers report the broker down.
    """
    from powerq.tasks.app import app as celery_app

    bounded = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s}
    with celery_app.connection_for_write(
        connect_timeout=timeout_s, transport_options=bounded
    ) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout_s)
        yield connection
