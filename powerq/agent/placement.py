"""Which agent runs which lane: rendezvous (highest random weight) hashing.

Every agent computes the same answer from the same list of live agents, with
no coordination: for each lane, the agent whose hash of ``(name, lane)`` is
highest. When an agent leaves, only its lanes move (each to the agent that
was second for it); when one joins, it takes about ``lanes / agents`` lanes,
each from one other agent, and no lane moves between the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection


def weight(agent: str, lane: int) -> int:
    """The agent's score for the lane (the same in every process and release)."""
    digest = hashlib.blake2b(f"{agent}\x00{lane}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(lane: int, agents: Collection[str]) -> str:
    """The agent that should run ``lane``.

    :raises ValueError: ``agents`` is empty.
    """
    if not agents:
        raise ValueError("no live agent")
    return max(sorted(agents), key=lambda agent: weight(agent, lane))


def lanes_of(agent: str, agents: Collection[str], lanes: int) -> set[int]:
    """The lanes 0 … ``lanes``-1 that ``agent`` should run when ``agents`` are live
    (``agent`` counts as live whether or not it is listed)."""
    live = {*agents, agent}
    return {lane for lane in range(lanes) if owner(lane, live) == agent}
