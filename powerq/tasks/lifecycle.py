"""What a lane worker does when it starts and when it stops.

* Start: a lane has exactly one worker, so a lease held on a request claimed
  on this lane by another worker (under another lane fence, or unfenced)
  belongs to a predecessor that died (SIGKILL, crash, host restart) or lost
  the lane. Its work resumes at once instead of waiting for the lease to run
  out and the sweeper to notice: the leases are ended (the next claim's
  fenced attempt makes any late write of the old one harmless) and the lane
  is rung for each request.
* Stop: every IPMI session this process holds is logged out, so a BMC's
  session slots are not held until its own inactivity timeout.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown
from sqlalchemy import select, text

from powerq.bmc import close_all, load_drivers
from powerq.config import get_settings
from powerq.db import session_scope
from powerq.models import Node
from powerq.states import DriverKind
from powerq.tasks import lane_fence
from powerq.tasks.dispatch import send_step

log = logging.getLogger(__name__)
_RESUME = text(
    """
    UPDATE power_requests r SET lease_expires_at = now()
    FROM nodes n
    WHERE n.id = r.node_id AND r.status = 'running' AND r.lease_expires_at > now()
      AND r.lane = :lane
      AND (CAST(:fence AS bigint) IS NULL OR r.lane_fence IS DISTINCT FROM :fence)
    RETURNING r.id, n.name, r.action
    """
)


def resume_lane(lane: int, fence: int | None = None) -> list[uuid.UUID]:
    """End the leases that an earlier consumer of ``lane`` held (claimed on this
    lane under another fence, or unfenced) and ring each request; one statement.

    A request a worker of another lane holds is left alone, even if its node
    maps to this lane now (``POWERQ_LANES`` was raised): its lease and fenced
    attempt keep it to that worker until it parks or finishes. Returns the
    request ids resumed. A broker error leaves them to the sweeper.

    :raises sqlalchemy.exc.DBAPIError: the database is unreachable.
    """
    with session_scope() as session:
        rows = session.execute(_RESUME, {"lane": lane, "fence": fence}).all()
    for request_id, name, action in rows:
        try:
            send_step(request_id, name, action=action)
        except Exception as exc:  # broker down: the sweeper rings it later
            log.warning("could not ring resumed request %s: %s", request_id, exc)
    return [request_id for request_id, _, _ in rows]


def preload_drivers() -> tuple[DriverKind, ...]:
    """Import the enabled drivers that registered nodes use (pyghmi, sushy cost
    0.15-0.2 s of CPU and several MiB each), so that the first request does not
    pay for it; a driver no node uses stays unloaded until one does. Returns them.
    """
    with session_scope() as session:
        used = set(session.scalars(select(Node.driver).distinct()))
    kinds = tuple(kind for kind in get_settings().drivers if kind in used)
    load_drivers(kinds)
    return kinds


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    held = lane_fence.held()  # set by powerq.tasks.worker.serve for a lane worker
    if held is None:
        return
    lane = held.lane
    try:
        preload_drivers()
        resumed = resume_lane(lane, held.fence)
    except Exception:  # the database may be down: the sweeper recovers the work
        log.exception("lane %s: could not resume a predecessor's requests", lane)
        return
    if resumed:
        log.info("lane %s: resumed %d request(s) a dead worker held", lane, len(resumed))


def _on_shutdown(**_: Any) -> None:
    close_all()


worker_ready.connect(_on_worker_ready, weak=False)
worker_process_shutdown.connect(_on_shutdown, weak=False)
worker_shutdown.connect(_on_shutdown, weak=False)
