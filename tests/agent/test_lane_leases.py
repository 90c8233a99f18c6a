"""Lane leases and agent heartbeats against the real PostgreSQL: a lane is taken
only once free, renewed only by its holder before it expires, and every change
of hands raises its fence."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session

from powerq.agent import leases
from powerq.agent.leases import Identity


def _agent(name: str, *, auto: bool = True) -> Identity:
    return Identity(name=name, incarnation=uuid.uuid4(), pid=1, auto=auto)


def _expire(session: Session, table: str, where: str) -> None:
    session.execute(text(f"UPDATE {table} SET expires_at = now() - interval '1 s' WHERE {where}"))
    session.commit()


def test_a_free_lane_is_taken_once_under_fence_one(session: Session) -> None:
    a, b = _agent("a"), _agent("b")

    assert leases.acquire(a, [0, 1], lease_s=30) == {0: 1, 1: 1}
    assert leases.acquire(b, [0, 1, 2], lease_s=30) == {2: 1}


def test_an_expired_lane_changes_hands_under_a_higher_fence(session: Session) -> None:
    a, b = _agent("a"), _agent("b")
    leases.acquire(a, [3], lease_s=30)
    _expire(session, "lane_leases", "lane = 3")

    assert leases.acquire(b, [3], lease_s=30) == {3: 2}
    assert leases.heartbeat(a, lease_s=30, held=[3]).held == {}  # not a's again by renewing
    assert leases.heartbeat(b, lease_s=30, held=[3]).held == {3: 2}


def test_a_heartbeat_renews_only_this_runs_unexpired_leases(session: Session) -> None:
    a = _agent("a")
    leases.acquire(a, [0, 1], lease_s=30)
    _expire(session, "lane_leases", "lane = 1")
    restarted = Identity("a", uuid.uuid4(), 2, True)  # same name, a new run

    assert leases.heartbeat(a, lease_s=30, held=[0, 1]).held == {0: 1}
    assert leases.heartbeat(restarted, lease_s=30).registered is False
    assert leases.acquire(restarted, [0, 1], lease_s=30) == {1: 2}  # 0 is still a's


def test_a_second_live_agent_of_the_same_name_is_not_registered(session: Session) -> None:
    first, second = _agent("host"), _agent("host")

    assert leases.heartbeat(first, lease_s=30).registered
    assert not leases.heartbeat(second, lease_s=30).registered
    _expire(session, "agents", "name = 'host'")
    assert leases.heartbeat(second, lease_s=30).registered
    assert not leases.heartbeat(first, lease_s=30).registered  # the old run lost its name


def test_members_are_the_live_auto_agents(session: Session) -> None:
    a, b, pinned, gone = _agent("a"), _agent("b"), _agent("p", auto=False), _agent("g")
    for agent in (b, pinned, gone):
        leases.heartbeat(agent, lease_s=30)
    _expire(session, "agents", "name = 'g'")

    assert leases.heartbeat(a, lease_s=30).members == {"a", "b"}
    assert leases.heartbeat(pinned, lease_s=30).members == {"a", "b"}


def test_release_and_leave_free_lanes_at_once(session: Session) -> None:
    a, b = _agent("a"), _agent("b")
    leases.heartbeat(a, lease_s=30)
    leases.acquire(a, [0, 1, 2], lease_s=30)

    leases.release(a, [0])
    assert leases.acquire(b, [0, 1], lease_s=30) == {0: 2}
    leases.leave(a)
    assert leases.acquire(b, [1, 2], lease_s=30) == {1: 2, 2: 2}
    assert leases.heartbeat(b, lease_s=30).members == {"b"}


def test_a_restarted_worker_gets_a_fence_of_its_own_while_the_lease_holds(
    session: Session,
) -> None:
    a, b = _agent("a"), _agent("b")
    leases.acquire(a, [0], lease_s=30)

    assert leases.refence(a, 0) == 2
    assert leases.refence(b, 0) is None
    _expire(session, "lane_leases", "lane = 0")
    assert leases.refence(a, 0) is None


def test_only_the_lanes_an_agent_runs_are_renewed(session: Session) -> None:
    a = _agent("a")
    leases.acquire(a, [0, 1], lease_s=30)  # say the answer about lane 1 was lost
    session.execute(text("UPDATE lane_leases SET expires_at = now() + interval '1 s'"))
    session.commit()

    assert leases.heartbeat(a, lease_s=30, held=[0]).held == {0: 1}
    (until,) = session.execute(
        text("SELECT expires_at - now() < interval '2 s' FROM lane_leases WHERE lane = 1")
    ).one()
    assert until  # lane 1 runs out instead of being kept with no worker


def test_a_run_that_knows_its_predecessor_is_dead_takes_its_name_and_lanes_at_once(
    session: Session,
) -> None:
    crashed = _agent("up")
    leases.heartbeat(crashed, lease_s=30)
    leases.acquire(crashed, [0, 1], lease_s=30)
    leases.acquire(_agent("other"), [2], lease_s=30)
    restarted = Identity("up", uuid.uuid4(), 2, True, take_over=True)

    assert leases.heartbeat(restarted, lease_s=30).registered
    assert leases.acquire(restarted, [0, 1, 2], lease_s=30) == {0: 2, 1: 2}  # not another's
