"""Celery side of batch pacing: the ``powerq.batch_pump`` task and its callers.

The pump itself (:func:`powerq.batches.pump`) is one short transaction that
releases held batch requests; what it released is published here, after
commit, with a countdown until each request's ``not_before``. It runs:

* when a batch request finishes and its batch still holds requests back (the
  executor's finish statement says so): the executor calls :func:`wake`,
  which sends ``powerq.batch_pump`` (the batch id as its only argument) to
  the control queue;
* from every sweep (:func:`pump_in_sweep`), so a lost ring or a restart only
  delays the batch by one sweep interval;
* right after a batch is created (the API calls :func:`dispatch_releases`).

Every sweep also fails the batch requests not started by their batch's
deadline (:func:`expire_in_sweep`), before it pumps.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from sqlalchemy.exc import OperationalError

from powerq.batches import EXPIRE_LIMIT, Release, expire_unstarted, pump
from powerq.db import session_scope
from powerq.tasks.app import app
from powerq.tasks.dispatch import StepMessage, send_steps
from powerq.tasks.routing import CONTROL_QUEUE

log = logging.getLogger(__name__)

PUMP_TASK = "powerq.batch_pump"
# A countdown message must not reach the lane before its not_before on
# PostgreSQL's clock (the claim would skip it); a little slack covers clock skew
# between this host and the worker's.
COUNTDOWN_SLACK_S = 0.25
_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0.0, "interval_step": 0.2}


@app.task(  # type: ignore[untyped-decorator]
    name=PUMP_TASK,
    ignore_result=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=5,
)
def batch_pump(batch_id: str | None = None) -> int:
    """Release what batch ``batch_id`` (or every active batch) may start now."""
    return pump_and_dispatch([uuid.UUID(batch_id)] if batch_id else None)


def pump_and_dispatch(only: Iterable[uuid.UUID] | None = None) -> int:
    """Pump in one transaction, publish after commit; return how many were published.

    :raises sqlalchemy.exc.OperationalError: the database cannot be reached.
    """
    with session_scope() as session:
        releases = pump(session, None if only is None else list(only))
    return dispatch_releases(releases)


def dispatch_releases(releases: Iterable[Release]) -> int:
    """Publish released requests on their lanes (after commit), all through one
    producer connection; return how many went out.

    Stops at the first broker error: the releases are recorded with
    ``dispatched_at = not_before``, so the sweeper re-rings them once that is stale.
    """
    return send_steps(
        StepMessage(
            release.request_id,
            release.node_name,
            release.delay_s + COUNTDOWN_SLACK_S if release.delay_s > 0 else None,
        )
        for release in releases
    )


def wake(batch_id: uuid.UUID) -> None:
    """Send ``powerq.batch_pump`` for a batch that holds requests back.

    Never raises: the sweeper pumps anyway.
    """
    try:
        app.send_task(
            PUMP_TASK,
            args=[str(batch_id)],
            queue=CONTROL_QUEUE,
            routing_key=CONTROL_QUEUE,
            retry=True,
            retry_policy=_PUBLISH_RETRY,
        )
    except Exception as exc:
        log.warning("could not wake the batch pump of %s (sweeper will): %s", batch_id, exc)


def pump_in_sweep() -> int:
    """The sweeper's pump: like :func:`pump_and_dispatch`, but a failure is logged,
    never raised, so it cannot stop the sweep's own work."""
    try:
        return pump_and_dispatch()
    except Exception:
        log.exception("batch pump failed during the sweep")
        return 0


def expire_in_sweep(limit: int = EXPIRE_LIMIT) -> list[uuid.UUID]:
    """The sweeper's deadline check: fail batch requests not started by their
    batch's deadline (:func:`powerq.batches.expire_unstarted`) in one short
    transaction; return their ids. A failure is logged, never raised."""
    try:
        with session_scope() as session:
            expired = expire_unstarted(session, limit=limit)
    except Exception:
        log.exception("failing batch requests past their batch's deadline failed during the sweep")
        return []
    if expired:
        log.info("failed %d batch request(s) not started before their deadline", len(expired))
    return expired
