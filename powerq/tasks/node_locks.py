"""One BMC conversation per node at a time inside a lane worker.

A lane worker runs many nodes' steps at once (a bounded thread pool), and a
node always maps to one lane, so a per-process lock per node is enough to keep
a monitor read and a power step of the same node from reaching its BMC
together. Ordering of a node's steps is the database's (claims and leases);
this lock only keeps two threads of one lane off the same BMC.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_guard = threading.Lock()
_locks: dict[int, threading.Lock] = {}


def _lock_of(node_id: int) -> threading.Lock:
    with _guard:
        lock = _locks.get(node_id)
        if lock is None:
            lock = _locks[node_id] = threading.Lock()
        return lock


@contextmanager
def bmc_turn(node_id: int, *, wait: bool = True, timeout: float = -1) -> Iterator[bool]:
    """Hold node ``node_id``'s BMC for the block; yields whether the turn was taken.

    With ``wait=False`` the block runs at once and sees False when another
    thread is talking to that BMC (a monitor read simply skips the node);
    with ``timeout`` it waits that many seconds at most.
    """
    lock = _lock_of(node_id)
    taken = lock.acquire(blocking=wait, timeout=timeout if wait else -1)
    try:
        yield taken
    finally:
        if taken:
            lock.release()
