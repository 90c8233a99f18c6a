"""A live powerq stack for end-to-end tests: real lane workers as subprocesses,
the simulated IPMI fleet, the suite's PostgreSQL and Redis.

Requests enter exactly as the API enters them (``intents.request_power`` in one
transaction, then ``dispatch_request`` after commit).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select

from powerq.bmc.simfleet.launcher import SimFleetProcess
from powerq.config import get_settings
from powerq.db import session_scope
from powerq.intents import find_node, request_power
from powerq.inventory import NodeSpec, create_node
from powerq.models import Node, PowerRequest
from powerq.states import FINISHED_STATUSES, Action, DriverKind
from powerq.supervisor import ProcessGroup
from powerq.tasks.app import app
from powerq.tasks.routing import lane_for


class Stack:
    """Workers plus fleet; registers the fleet's BMCs as nodes."""

    def __init__(self, fleet: SimFleetProcess, log_dir: Path) -> None:
        self.fleet = fleet
        self.lanes = get_settings().lanes
        self.processes = ProcessGroup(log_dir=log_dir)

    # --- processes -------------------------------------------------------------
    def start_workers(self, *, wait: bool = True) -> None:
        """One concurrency-1 worker per lane, each waited for until it answers a ping."""
        for lane in range(self.lanes):
            self.start_worker(lane, wait=False)
        if wait:
            for lane in range(self.lanes):
                self.wait_worker(lane)

    def start_worker(self, lane: int, *, wait: bool = True) -> None:
        """Start (or restart) the worker of ``lane``."""
        self.processes.python(f"lane{lane}", "powerq.cli", "worker", "--lane", str(lane))
        if wait:
            self.wait_worker(lane)

    def start_scheduler(self) -> None:
        """The control worker (sweeper, monitor jobs) and beat."""
        self.processes.python("control", "powerq.cli", "worker", "--control")
        self.start_beat()

    def start_beat(self) -> None:
        """Start (or restart) celery beat."""
        self.processes.python("beat", "powerq.cli", "beat")

    def wait_worker(self, lane: int, timeout: float = 60.0) -> None:
        """Block until lane ``lane``'s worker answers a broadcast ping.

        :raises TimeoutError: it did not come up in time (its log says why).
        """
        name = f"lane{lane}@{socket.gethostname()}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if app.control.ping(destination=[name], timeout=0.5):
                return
            child = self.processes.children[f"lane{lane}"]
            if not child.alive:
                break
        raise TimeoutError(f"worker {name} did not start; see {child.log_path}")

    def stop(self) -> None:
        """Stop every worker this stack started."""
        self.processes.stop_all()

    # --- nodes and requests ---------------------------------------------------
    def register_fleet(self, count: int | None = None) -> list[str]:
        """Register the first ``count`` BMCs of the fleet as nodes; return their names."""
        names = []
        with session_scope() as session:
            for row in self.fleet.manifest[:count]:
                spec = NodeSpec(
                    row["name"],
                    DriverKind.IPMI,
                    row["address"],
                    row["port"],
                    row["username"],
                    row["password"],
                )
                create_node(session, spec, actor="test")
                names.append(row["name"])
        return names

    def submit(self, name: str, action: Action, **options: object) -> uuid.UUID:
        """Request ``action`` on node ``name`` as the API does; return the request id."""
        from powerq.tasks.dispatch import dispatch_request

        with session_scope() as session:
            node = find_node(session, name)
            intent = request_power(session, node, action, actor="test", **options)  # type: ignore[arg-type]
            request_id, created = intent.request.id, intent.created
        if created:
            dispatch_request(request_id, name, action)
        return request_id

    def wait_finished(
        self, request_ids: Iterable[uuid.UUID], timeout: float = 120.0
    ) -> dict[uuid.UUID, PowerRequest]:
        """Poll until every request has finished; return them.

        :raises TimeoutError: some are still outstanding (listed with their state).
        """
        ids = list(request_ids)
        deadline = time.monotonic() + timeout
        while True:
            rows = self.requests(ids)
            if all(r.status in FINISHED_STATUSES for r in rows.values()):
                return rows
            if time.monotonic() > deadline:
                waiting = [
                    (r, r.dispatched_at, r.dispatch_count, r.lease_expires_at, r.next_step)
                    for r in rows.values()
                    if r.status not in FINISHED_STATUSES
                ]
                raise TimeoutError(
                    f"{len(waiting)} requests still outstanding: {waiting[:5]}; "
                    f"worker logs in {self.processes.log_dir}"
                )
            time.sleep(0.2)

    @staticmethod
    def requests(ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, PowerRequest]:
        """The current rows of ``ids``."""
        with session_scope() as session:
            rows = session.scalars(select(PowerRequest).where(PowerRequest.id.in_(list(ids))))
            return {row.id: row for row in rows}

    @staticmethod
    def node(name: str) -> Node:
        """The current row of node ``name``."""
        with session_scope() as session:
            return find_node(session, name)

    def same_lane_pair(self, names: list[str]) -> tuple[str, str]:
        """Two node names that share a lane."""
        by_lane: dict[int, list[str]] = {}
        for name in names:
            by_lane.setdefault(lane_for(name, self.lanes), []).append(name)
        for members in by_lane.values():
            if len(members) >= 2:
                return members[0], members[1]
        raise LookupError("no two nodes share a lane")

    def power_commands(self, name: str) -> list[dict[str, object]]:
        """The chassis control commands BMC ``name`` received (from its command log)."""
        return [
            dict(entry)
            for entry in self.fleet.control.log(name)
            if entry["command"] == "chassis_control"
        ]
