"""What a lane worker does when it starts and when it stops.

* Start: a lane has exactly one worker, so a lease held on this lane's
  requests when its worker starts belongs to a predecessor that died (SIGKILL,
  crash, host restart). Its work resumes at once instead of waiting for the
  lease to run out and the sweeper to notice: the leases are ended (the next
  claim's fenced attempt makes any late write of the dead one harmless) and
  the lane is rung for each request.
* Stop: every IPMI session this process holds is logged out, so a BMC's
  session slots are not held until its own inactivity timeout.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown
from sqlalchemy import func, select, update

from powerq.bmc import close_all, load_drivers
from powerq.config import get_settings
from powerq.db import session_scope
from powerq.models import Node, PowerRequest
from powerq.states import DriverKind, RequestStatus
from powerq.tasks.dispatch import send_step
from powerq.tasks.routing import lane_for

log = logging.getLogger(__name__)
_LANE_HOST_PREFIX = "lane"


def lane_of_hostname(hostname: str) -> int | None:
    """The lane of a worker named ``laneK@host`` (see :mod:`powerq.tasks.worker`), else None."""
    name = hostname.split("@", 1)[0]
    if not name.startswith(_LANE_HOST_PREFIX) or not name[len(_LANE_HOST_PREFIX) :].isdigit():
        return None
    return int(name[len(_LANE_HOST_PREFIX) :])


def resume_lane(lane: int) -> list[uuid.UUID]:
    """End the leases a dead predecessor held on ``lane`` and ring each request.

    Returns the request ids resumed. A broker error leaves them to the sweeper.
    """
    lanes = get_settings().lanes
    leased = (
        PowerRequest.status == RequestStatus.RUNNING,
        PowerRequest.lease_expires_at > func.now(),
    )
    with session_scope() as session:
        # Read without locking, then lock only this lane's rows: workers of several
        # lanes start together (an agent takes over a dead one's lanes), and locking
        # every leased row with SKIP LOCKED made each skip the others' lanes' rows,
        # which then waited for their lease and the sweeper.
        held = session.execute(
            select(PowerRequest.id, Node.name, PowerRequest.action)
            .join(Node, Node.id == PowerRequest.node_id)
            .where(*leased)
        ).all()
        candidates = {
            rid: (rid, name, action) for rid, name, action in held if lane_for(name, lanes) == lane
        }
        mine = []
        if candidates:
            ended = session.scalars(
                update(PowerRequest)
                .where(PowerRequest.id.in_(list(candidates)), *leased)
                .values(lease_expires_at=func.now())
                .returning(PowerRequest.id)
            )
            mine = [candidates[rid] for rid in ended]
    for request_id, name, action in mine:
        try:
            send_step(request_id, name, action=action)
        except Exception as exc:  # broker down: the sweeper rings it later
            log.warning("could not ring resumed request %s: %s", request_id, exc)
    return [rid for rid, _, _ in mine]


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
    lane = lane_of_hostname(getattr(sender, "hostname", "") or "")
    if lane is None:
        return
    try:
        preload_drivers()
        resumed = resume_lane(lane)
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
