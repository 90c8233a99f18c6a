"""Which agent runs which lane: rendezvous hashing with bounded load.

Every agent computes the same answer from the same list of live agents, with
no coordination. Each lane ranks the agents by a hash of ``(agent, lane)``
(rendezvous, or highest-random-weight, hashing); lanes are handed out in
order, each to the highest-ranked agent that still has room: every agent
ends with ``lanes // agents`` lanes or one more. Plain rendezvous hashing moves the fewest
lanes but is uneven with few lanes (two agents and four lanes can give one
agent all four); the bound keeps every share within one lane of the others,
at the cost of moving a few more lanes when an agent joins or leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection


def weight(agent: str, lane: int) -> int:
    """The agent's score for the lane (the same in every process and release)."""
    digest = hashlib.blake2b(f"{agent}\x00{lane}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assignment(agents: Collection[str], lanes: int) -> dict[int, str]:
    """Lane -> agent for lanes 0 … ``lanes``-1 over ``agents``.

    :raises ValueError: ``agents`` is empty.
    """
    if not agents:
        raise ValueError("no live agent")
    names = sorted(set(agents))
    share, extra = divmod(lanes, len(names))  # `extra` agents run share + 1 lanes
    load = dict.fromkeys(names, 0)
    owners = {}
    for lane in range(lanes):
        ranked = sorted(names, key=lambda agent: weight(agent, lane), reverse=True)
        chosen = next(agent for agent in ranked if _has_room(load, agent, share, extra))
        load[chosen] += 1
        owners[lane] = chosen
    return owners


def _has_room(load: dict[str, int], agent: str, share: int, extra: int) -> bool:
    """Whether ``agent`` may take one more lane: below ``share``, or at it while
    fewer than ``extra`` agents have ``share + 1``."""
    if load[agent] < share:
        return True
    return load[agent] == share and sum(n > share for n in load.values()) < extra


def lanes_of(agent: str, agents: Collection[str], lanes: int) -> set[int]:
    """The lanes 0 … ``lanes``-1 that ``agent`` should run when ``agents`` are live
    (``agent`` counts as live whether or not it is listed)."""
    owners = assignment({*agents, agent}, lanes)
    return {lane for lane, owner in owners.items() if owner == agent}
