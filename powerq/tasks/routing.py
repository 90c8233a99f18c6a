"""Which lane a node's work runs on: the one place that decides it.

A node always maps to the same lane (a stable hash of its name, the same in
every process and across restarts), and each lane is consumed by exactly one
worker process. That worker drives many nodes at once; a node's steps run in
order, one at a time (claims and leases in PostgreSQL; one BMC turn per node).
"""

from __future__ import annotations

import zlib

LANE_PREFIX = "powerq.lane."
CONTROL_QUEUE = "powerq.control"


def lane_for(node_name: str, lanes: int) -> int:
    """The lane number (0 … lanes-1) of ``node_name``.

    :raises ValueError: ``lanes`` is not positive.
    """
    if lanes < 1:
        raise ValueError("lanes must be at least 1")
    return zlib.crc32(node_name.encode("utf-8")) % lanes


def lane_queue(lane: int) -> str:
    """The Redis queue name of lane ``lane``."""
    return f"{LANE_PREFIX}{lane}"
