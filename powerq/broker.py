"""What powerq adds to kombu's Redis transport: Redis Sentinel settings.

``POWERQ_BROKER_URL=sentinel://h1:26379;sentinel://h2:26379;sentinel://h3:26379``
with ``POWERQ_BROKER_MASTER_NAME`` makes every Redis client of powerq (Celery's
workers and beat, the API's lane publisher, the sweeper's and metrics' queue
lengths, ``/healthz``) ask the sentinels where the primary is, and ask again
after a connection to it fails: after a failover they reach the promoted
replica. See docs/high-availability.md.
"""

from __future__ import annotations

from typing import Any

from powerq.config import Settings

# Sentinels answer in microseconds on a sane network; a dead one must not hold
# up the question to the next (redis-py asks them in turn).
SENTINEL_SOCKET_TIMEOUT_S = 2.0


def is_sentinel_url(url: str | None) -> bool:
    """Whether ``url`` names Redis Sentinels (``sentinel://h1:p1;sentinel://h2:p2``)."""
    return bool(url) and str(url).startswith("sentinel://")


def sentinel_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu transport options for ``settings``' broker: empty unless it is Sentinel.

    With sentinels: the master name and, if the sentinels need one, their own
    password. Without a password no ``sentinel_kwargs`` is given, so redis-py
    asks the sentinels with the primary's ``socket_*`` options (and
    ``/healthz``'s 1 s bound applies to them too); with one, it needs its own
    timeouts, since redis-py then copies nothing.
    """
    if not is_sentinel_url(settings.broker_url):
        return {}
    options: dict[str, Any] = {"master_name": settings.broker_master_name}
    if settings.broker_sentinel_password:
        options["sentinel_kwargs"] = {
            "password": settings.broker_sentinel_password,
            "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S,
        }
    return options
