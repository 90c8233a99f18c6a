"""The lane (and lane lease) a lane worker runs under, named in its claims and
command marks.

A worker started by ``powerq agent`` holds lane ``lane`` under fence
``fence`` (:mod:`powerq.agent.leases`); every worker process the agent
starts gets a fence of its own. Claiming a request and marking a command as
sent both require that lease to be current, with the agent's margin left, in
the same statement, so a worker whose lane has changed hands (its agent was
stopped or partitioned for longer than the lease, then woke) claims nothing
and marks no command (the transmit after a mark checks the worker's
deadline once more: docs/scaling-out.md says what window is left). A
worker started on its own (``powerq worker --lane K``) has no fence and
checks none: one consumer per lane is then its operator's promise.

Every claim records the lane and fence it was made under on the request, so
a lane worker that starts resumes only what an earlier consumer of its own
lane held (:func:`powerq.tasks.lifecycle.resume_lane`), not a request that a
worker of another lane runs (the node-to-lane mapping changes when
``POWERQ_LANES`` is raised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# SQL: the lease named by :fence_lane / :fence is current, with at least
# :fence_headroom_s of it left (the share the agent keeps as its margin), or
# there is none to check.
CURRENT = (
    "(CAST(:fence AS bigint) IS NULL OR EXISTS (SELECT 1 FROM lane_leases f"
    " WHERE f.lane = :fence_lane AND f.fence = :fence"
    " AND f.expires_at > now() + make_interval(secs => :fence_headroom_s)))"
)


@dataclass(frozen=True)
class LaneFence:
    """Lane ``lane``, held under fence ``fence`` (None: unfenced)."""

    lane: int
    fence: int | None


_held: LaneFence | None = None


def hold(fence: LaneFence | None) -> None:
    """This process consumes under ``fence`` from now on (None: not a lane worker)."""
    global _held
    _held = fence


def held() -> LaneFence | None:
    """The fence this process consumes under, if any."""
    return _held


def params() -> dict[str, Any]:
    """The bind parameters :data:`CURRENT` and the claim's record of it need."""
    from powerq.agent.deadline import MARGIN_SHARE
    from powerq.config import get_settings

    headroom = get_settings().lane_lease_s * MARGIN_SHARE
    if _held is None:
        return {"fence_lane": None, "fence": None, "fence_headroom_s": headroom}
    return {"fence_lane": _held.lane, "fence": _held.fence, "fence_headroom_s": headroom}
