"""The monitor at fleet scale, in-process: every due node per tick, one message per
lane chunk, a refresh run in O(1) statements, and the observation rules.

Nodes use the in-process sim driver; messages go to the suite's real Redis and
are read back from the lane queues; statements go to the real PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from powerq.bmc.base import BmcTarget
from powerq.bmc.sim import REGISTRY, SimPowerDriver
from powerq.config import get_settings
from powerq.intents import request_power
from powerq.models import Node, PowerEvent, PowerRequest
from powerq.secrets import encrypt_password
from powerq.states import Action, DesiredPowerState, DriverKind, PowerState, RequestStatus
from powerq.tasks import monitor as mon
from powerq.tasks.node_locks import bmc_turn
from powerq.tasks.routing import lane_queue
from tests.statements import count_statements

ADDRESS = "127.0.0.77"
BASE_PORT = 30000
OLD_TICK_CAP = 1000


def _add_nodes(session: Session, count: int, prefix: str = "m") -> list[int]:
    """``count`` sim nodes in one INSERT (one password token for all); their ids."""
    token = encrypt_password("pw")
    rows = [
        {
            "name": f"{prefix}-{i:05d}",
            "driver": DriverKind.SIM,
            "bmc_address": ADDRESS,
            "bmc_port": BASE_PORT + i,
            "bmc_username": "admin",
            "bmc_password_encrypted": token,
        }
        for i in range(count)
    ]
    ids = list(session.scalars(insert(Node).returning(Node.id), rows))
    session.commit()
    return ids


class CountingSim(SimPowerDriver):
    """A sim BMC that counts its power-state reads."""

    reads = 0

    def get_power_state(self) -> PowerState:
        self.reads += 1
        return super().get_power_state()


def _sim(port: int, power: PowerState = PowerState.ON) -> CountingSim:
    target = BmcTarget("sim", ADDRESS, port, "admin", "")
    sim = CountingSim(target, power=power)
    REGISTRY.put(sim)
    return sim


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    REGISTRY.clear()
    yield
    REGISTRY.clear()


def _queued_messages() -> dict[str, list[list[int]]]:
    """The node-id lists of every ``powerq.refresh_nodes`` message, by lane queue."""
    url = get_settings().broker_url
    assert url
    broker = redis.Redis.from_url(url)
    found: dict[str, list[list[int]]] = {}
    for lane in range(get_settings().lanes):
        queue = lane_queue(lane)
        for raw in broker.lrange(queue, 0, -1):
            message = json.loads(raw)
            assert message["headers"]["task"] == mon.REFRESH_TASK
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.setdefault(queue, []).append(args[0])
    return found


def test_one_tick_marks_every_due_node_and_rings_each_lane_per_chunk(session: Session) -> None:
    count = OLD_TICK_CAP + 500
    ids = _add_nodes(session, count)

    assert mon.monitor() == count
    messages = _queued_messages()

    assert mon.monitor() == 0  # all marked: nothing is due again this interval
    assert len(messages) == get_settings().lanes
    for chunks in messages.values():
        assert all(1 <= len(chunk) <= mon.CHUNK_SIZE for chunk in chunks)
        lane_total = sum(len(chunk) for chunk in chunks)
        assert len(chunks) == -(-lane_total // mon.CHUNK_SIZE)  # one message per chunk
    assert sorted(i for chunks in messages.values() for c in chunks for i in c) == sorted(ids)

    for chunks in messages.values():  # as the lane workers would run them
        for chunk in chunks:
            mon.refresh_chunk(chunk)
    session.expire_all()
    refreshed = session.scalar(
        select(func.count()).where(Node.power_state_at.is_not(None), Node.last_error.is_(None))
    )
    assert refreshed == count


def test_pages_cover_more_than_one_page(session: Session) -> None:
    ids = _add_nodes(session, 25)
    assert sorted(i for i, _ in mon.due_for_refresh(60.0, page_size=10)) == sorted(ids)
    assert mon.due_for_refresh(60.0, page_size=10) == []


def test_a_node_is_due_again_at_the_next_tick(session: Session) -> None:
    [node_id] = _add_nodes(session, 1)
    assert len(mon.due_for_refresh(60.0)) == 1
    # The next beat, a hair under one interval later, still picks it.
    session.execute(
        update(Node)
        .where(Node.id == node_id)
        .values(last_checked_at=func.now() - timedelta(seconds=59.9))
    )
    session.commit()
    assert [i for i, _ in mon.due_for_refresh(60.0)] == [node_id]


def test_a_refresh_keeps_the_ticks_mark_so_the_next_tick_picks_the_node(
    session: Session,
) -> None:
    [node_id] = _add_nodes(session, 1)
    mark = func.now() - timedelta(seconds=55)  # marked by the last tick, 55 s ago
    session.execute(update(Node).where(Node.id == node_id).values(last_checked_at=mark))
    session.commit()
    mon.refresh_nodes([node_id])  # its refresh ran a few seconds after the mark
    assert [i for i, _ in mon.due_for_refresh(60.0)] == [node_id]


def test_statements_per_run_do_not_grow_with_nodes(session: Session) -> None:
    ids = _add_nodes(session, 210)
    counts = []
    for chunk in (ids[:10], ids[10:]):
        with count_statements() as counter:
            assert len(mon.refresh_nodes(chunk)) == len(chunk)
        counts.append(len(counter))
    assert counts[0] == counts[1] <= 3, counts


def test_a_node_whose_bmc_turn_is_held_is_skipped(session: Session) -> None:
    first, second = _add_nodes(session, 2)
    sims = [_sim(BASE_PORT), _sim(BASE_PORT + 1)]
    with bmc_turn(first):  # a power step of this node is talking to its BMC
        states = mon.refresh_nodes([first, second])
    assert states == {second: PowerState.ON}
    assert [s.reads for s in sims] == [0, 1]
    assert session.get(Node, first).power_state_at is None  # type: ignore[union-attr]


def test_unreachable_bmcs_are_recorded_and_the_rest_stored(session: Session) -> None:
    down, up = _add_nodes(session, 2)
    _sim(BASE_PORT).set_fault("down")
    _sim(BASE_PORT + 1, PowerState.OFF)

    assert mon.refresh_nodes([down, up]) == {up: PowerState.OFF}
    session.expire_all()
    dead, alive = session.get(Node, down), session.get(Node, up)
    assert dead is not None and alive is not None
    assert dead.last_error is not None and dead.last_error.startswith("monitor: ")
    assert dead.power_state is PowerState.UNKNOWN
    assert alive.power_state is PowerState.OFF and alive.last_error is None


def test_an_older_read_never_overwrites_a_newer_one(session: Session) -> None:
    [node_id] = _add_nodes(session, 1)
    _sim(BASE_PORT, PowerState.ON)
    future = func.now() + timedelta(hours=1)
    session.execute(
        update(Node)
        .where(Node.id == node_id)
        .values(power_state=PowerState.OFF, power_state_at=future)
    )
    session.commit()

    assert mon.refresh_nodes([node_id]) == {node_id: PowerState.ON}  # read, then dropped
    session.expire_all()
    assert session.get(Node, node_id).power_state is PowerState.OFF  # type: ignore[union-attr]


def test_nodes_with_an_outstanding_request_are_not_read(session: Session) -> None:
    [node_id] = _add_nodes(session, 1)
    sim = _sim(BASE_PORT)
    node = session.get(Node, node_id)
    assert node is not None
    request_power(session, node, Action.OFF, actor="test")
    session.commit()

    assert mon.refresh_nodes([node_id]) == {}
    assert sim.reads == 0


def _events(session: Session, kind: str) -> list[PowerEvent]:
    return list(session.scalars(select(PowerEvent).where(PowerEvent.kind == kind)))


def test_drift_is_reported_and_a_fault_cleared(session: Session) -> None:
    drifted, faulty = _add_nodes(session, 2)
    _sim(BASE_PORT, PowerState.OFF)
    _sim(BASE_PORT + 1, PowerState.ON)
    session.execute(
        update(Node).where(Node.id == drifted).values(desired_power_state=DesiredPowerState.ON)
    )
    session.execute(
        update(Node)
        .where(Node.id == faulty)
        .values(power_fault=True, power_fault_reason="x", consecutive_failures=3)
    )
    session.commit()

    mon.refresh_nodes([drifted, faulty])
    session.expire_all()
    [drift] = _events(session, "drift")
    assert (drift.node_id, drift.actor) == (drifted, mon.ACTOR)
    assert drift.message == "observed off, desired on"
    assert drift.detail == {"observed": "off", "desired": "on"}
    [cleared] = _events(session, "power_fault_cleared")
    assert cleared.node_id == faulty
    node = session.get(Node, faulty)
    assert node is not None
    assert (node.power_fault, node.power_fault_reason, node.consecutive_failures) == (
        False,
        None,
        0,
    )
    assert session.scalar(select(func.count()).select_from(PowerRequest)) == 0  # not enforced


def test_enforcement_files_one_correction_but_never_in_maintenance(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERQ_ENFORCE_DESIRED", "true")
    get_settings.cache_clear()
    try:
        corrected, kept = _add_nodes(session, 2)
        _sim(BASE_PORT, PowerState.OFF)
        _sim(BASE_PORT + 1, PowerState.OFF)
        session.execute(
            update(Node)
            .where(Node.id.in_([corrected, kept]))
            .values(desired_power_state=DesiredPowerState.ON)
        )
        session.execute(update(Node).where(Node.id == kept).values(maintenance=True))
        session.commit()

        mon.refresh_nodes([corrected, kept])
    finally:
        monkeypatch.delenv("POWERQ_ENFORCE_DESIRED")
        get_settings.cache_clear()
    [request] = session.scalars(select(PowerRequest)).all()
    assert (request.node_id, request.action, request.requested_by) == (
        corrected,
        Action.ON,
        mon.ACTOR,
    )
    assert request.status is RequestStatus.PENDING
    assert len(_events(session, "drift")) == 2  # reported for both


def test_one_reader_pool_per_process_bounded_by_the_setting() -> None:
    pool = mon.reader_pool()
    assert pool is mon.reader_pool()
    assert pool._max_workers == get_settings().monitor_fanout
    seen: set[str] = set()
    barrier = threading.Barrier(2, timeout=10)

    def name() -> None:
        barrier.wait()
        seen.add(threading.current_thread().name)

    futures = [pool.submit(name) for _ in range(2)]
    for future in futures:
        future.result(10)
    assert all(n.startswith("powerq-monitor") for n in seen)
