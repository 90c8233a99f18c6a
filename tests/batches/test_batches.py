"""Batch semantics on the real database: membership, holding, pacing, the pump's hooks."""

from __future__ import annotations

import itertools
import threading
import uuid
from datetime import timedelta

import pytest
import redis
from sqlalchemy.orm import Session

from powerq.batches import (
    RELEASE_HORIZON,
    Selector,
    batch_view,
    glob_to_like,
    pump,
)
from powerq.db import session_factory, session_scope
from powerq.errors import InvalidInput, NotFound
from powerq.intents import find_node, request_power
from powerq.models import PowerRequest
from powerq.states import Action, DesiredPowerState, Evidence, RequestStatus
from powerq.tasks import batch_pump, leases, steps
from powerq.tasks.routing import CONTROL_QUEUE
from powerq.tasks.sweeper import _claim_redispatch, sweep_once
from tests.batches.helpers import create, finish, pump_now, released, requests_of, spec
from tests.factories import make_node
from tests.services import SuiteServices


def _nodes(session: Session, count: int, prefix: str = "n", **options: object) -> list[str]:
    names = [f"{prefix}{i}" for i in range(1, count + 1)]
    for name in names:
        make_node(session, name, **options)  # type: ignore[arg-type]
    return names


def test_reuses_identical_refuses_conflicting_and_disturbs_nothing(session: Session) -> None:
    n1, n2, n3 = _nodes(session, 3)
    same = request_power(session, find_node(session, n1), Action.OFF, actor="alice").request
    other = request_power(session, find_node(session, n2), Action.ON, actor="bob").request
    session.commit()

    created = create(session, spec(Action.OFF, [n1, n2, n3]))

    outcomes = {m.node: m.outcome for m in created.members}
    assert outcomes == {n1: "existing", n2: "refused", n3: "created"}
    by_node = {m.node: m for m in created.members}
    assert by_node[n1].request_id == same.id
    assert by_node[n2].request_id == other.id
    assert "outstanding 'on' request" in (by_node[n2].detail or "")
    with session_scope() as s:
        untouched = s.get(PowerRequest, other.id)
        reused = s.get(PowerRequest, same.id)
        assert untouched is not None and reused is not None
        assert (untouched.action, untouched.status, untouched.batch_id) == (
            Action.ON, RequestStatus.PENDING, None
        )  # fmt: skip
        assert untouched.node.desired_power_state is DesiredPowerState.ON
        assert reused.batch_id is None
        view = batch_view(s, created.batch.id)
    assert view.outcomes == {"created": 1, "existing": 1, "refused": 1}
    assert view.counts["refused"] == 1 and view.counts["pending"] == 2
    assert [(r.node, r.outcome) for r in view.results or []] == [
        (n1, "existing"), (n2, "refused"), (n3, "created")
    ]  # fmt: skip
    refused = (view.results or [])[1]
    assert refused.conflicting is not None and refused.conflicting.id == other.id
    assert refused.error and "cannot be accepted" in refused.error


def test_requests_beyond_max_in_flight_are_held_until_room_frees(session: Session) -> None:
    names = _nodes(session, 5)
    created = create(session, spec(Action.OFF, names, max_in_flight=2))

    assert released(created.batch.id) == ["n1", "n2"]
    assert [r.node_name for r in created.releases] == ["n1", "n2"]
    assert pump_now() == []  # no room: nothing more
    first = requests_of(created.batch.id)[0]
    finish([first.id])
    assert pump_now() == ["n3"]
    assert pump_now() == []
    unfinished = [r for r in requests_of(created.batch.id) if not r.held and r.finished_at is None]
    assert len(unfinished) == 2


def test_release_follows_the_order_the_nodes_were_given(session: Session) -> None:
    _nodes(session, 4)
    order = ["n3", "n1", "n4", "n2"]
    created = create(session, spec(Action.ON, order, max_in_flight=1))

    started = []
    for _ in order:
        (current,) = [r for r in requests_of(created.batch.id) if not r.held and not r.finished_at]
        started.append(current.node.name)
        finish([current.id])
        pump_now()
    assert started == order


def test_stagger_spaces_releases_and_stays_within_the_horizon(session: Session) -> None:
    names = _nodes(session, 9)
    created = create(session, spec(Action.ON, names, stagger_s=10.0))

    starts = [r.not_before for r in requests_of(created.batch.id) if not r.held]
    assert len(starts) == int(RELEASE_HORIZON.total_seconds() // 10) + 1  # 0, 10, … 60 s
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]  # type: ignore[operator]
    assert gaps == [timedelta(seconds=10)] * (len(starts) - 1)
    assert [r.delay_s for r in created.releases] == [10.0 * i for i in range(len(starts))]
    assert all(r.dispatched_at == r.not_before for r in requests_of(created.batch.id) if not r.held)


def test_a_later_pump_keeps_the_stagger_after_the_last_release(session: Session) -> None:
    names = _nodes(session, 3)
    created = create(session, spec(Action.ON, names, stagger_s=30.0, max_in_flight=1))
    first = requests_of(created.batch.id)[0]
    finish([first.id])

    assert pump_now() == ["n2"]
    second = requests_of(created.batch.id)[1]
    assert second.not_before - first.not_before >= timedelta(seconds=30)  # type: ignore[operator]


def test_held_and_not_yet_due_requests_are_neither_claimed_nor_redispatched(
    session: Session,
) -> None:
    names = _nodes(session, 3)
    created = create(session, spec(Action.OFF, names, stagger_s=30.0, max_in_flight=2))
    now_due, staggered, held = requests_of(created.batch.id)
    assert (now_due.held, staggered.held, held.held) == (False, False, True)

    assert leases.claim(held.id, 60) is None
    assert leases.claim(staggered.id, 60) is None  # not before its not_before
    with session_scope() as s:
        redispatched = {request_id for request_id, _, _ in _claim_redispatch(s, 100)}
        s.rollback()
    assert redispatched.isdisjoint({held.id, staggered.id})


def test_every_sweep_pumps_so_batches_survive_restarts(session: Session) -> None:
    names = _nodes(session, 2)
    created = create(session, spec(Action.OFF, names, max_in_flight=1))
    finish([requests_of(created.batch.id)[0].id])
    assert released(created.batch.id) == ["n1"]

    sweep_once()

    assert released(created.batch.id) == ["n1", "n2"]


def test_the_executor_wakes_the_pump_only_while_the_batch_holds_requests(
    session: Session, services: SuiteServices
) -> None:
    broker = redis.Redis.from_url(services.broker_url)
    names = _nodes(session, 2)
    created = create(session, spec(Action.OFF, names, max_in_flight=1))
    first, second = requests_of(created.batch.id)

    _close_as_the_executor_does(first.id)
    assert broker.llen(CONTROL_QUEUE) == 1

    pump_now()
    _close_as_the_executor_does(second.id)
    assert broker.llen(CONTROL_QUEUE) == 1  # nothing held: no wake


def _close_as_the_executor_does(request_id: uuid.UUID) -> None:
    claimed = leases.claim(request_id, lease_s=60)
    assert claimed is not None
    steps._close(claimed, steps.Done(RequestStatus.SUCCEEDED, evidence=Evidence.ALREADY))


def test_concurrent_pumps_never_release_more_than_max_in_flight(session: Session) -> None:
    names = _nodes(session, 30)
    created = create(session, spec(Action.OFF, names, max_in_flight=3))
    finish([r.id for r in requests_of(created.batch.id) if not r.held])
    barrier = threading.Barrier(6)
    results: list[int] = []

    def one_pump() -> None:
        barrier.wait(timeout=10)
        with session_factory()() as s, s.begin():
            results.append(len(pump(s)))

    threads = [threading.Thread(target=one_pump) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sum(results) == 3
    unfinished = [r for r in requests_of(created.batch.id) if not r.held and not r.finished_at]
    assert len(unfinished) == 3


def test_selectors_by_tag_and_name_pattern(session: Session) -> None:
    for name, tags in (("a_1", ("rack1",)), ("ab1", ("rack1",)), ("b-2", ("rack2", "gpu"))):
        make_node(session, name, tags=tags)

    by_tag = create(session, spec(Action.QUERY, selector=Selector(tags=("rack1",))))
    by_glob = create(session, spec(Action.QUERY, selector=Selector(name_glob="a_?")))
    assert sorted(m.node for m in by_tag.members) == ["a_1", "ab1"]
    assert [m.node for m in by_glob.members] == ["a_1"]  # "_" is literal, not LIKE's any-char
    assert glob_to_like("a_*%?") == "a\\_%\\%_"


def test_all_selects_every_node(session: Session) -> None:
    names = _nodes(session, 3)
    created = create(session, spec(Action.ON, selector=Selector(all=True)))
    assert [m.node for m in created.members] == names


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"nodes": ("n1", "ghost", "phantom")}, NotFound, "no node named 'ghost', 'phantom'"),
        ({"selector": Selector(tags=("nowhere",))}, NotFound, "no node matches the selector"),
        ({"selector": Selector()}, InvalidInput, "needs tags, a name_glob, or all"),
        ({}, InvalidInput, "either nodes or a selector"),
        ({"nodes": ("n1",), "stagger_s": -1.0}, InvalidInput, "stagger_s"),
        ({"nodes": ("n1",), "max_in_flight": 0}, InvalidInput, "max_in_flight"),
    ],
)
def test_invalid_batches_are_refused_and_write_nothing(
    session: Session, options: dict[str, object], error: type[Exception], message: str
) -> None:
    _nodes(session, 1)
    with pytest.raises(error, match=message):
        create(session, spec(Action.OFF, **options))
    session.rollback()
    with session_scope() as s:
        assert s.query(PowerRequest).count() == 0


def test_releases_are_published_after_commit_in_one_pipeline(
    session: Session, services: SuiteServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.client import Pipeline

    from powerq.config import get_settings
    from powerq.tasks.routing import lane_queue

    broker = redis.Redis.from_url(services.broker_url)
    created = create(session, spec(Action.OFF, _nodes(session, 3)))
    pushes: list[int] = []  # LPUSHes per pipeline executed (queue declarations have none)
    original = Pipeline.execute

    def execute(self: Pipeline, *args: object, **kwargs: object) -> object:
        names = [str(command[0][0]).upper() for command in self.command_stack]
        if "LPUSH" in names:
            pushes.append(names.count("LPUSH"))
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Pipeline, "execute", execute)

    assert batch_pump.dispatch_releases(created.releases) == 3
    queued = sum(broker.llen(lane_queue(k)) for k in range(get_settings().lanes))
    assert queued == 3
    assert pushes == [3]


def test_a_broker_failure_leaves_the_releases_to_the_sweeper(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kombu.exceptions import OperationalError

    from powerq.tasks.app import app

    created = create(session, spec(Action.OFF, _nodes(session, 3)))

    def send_task(*args: object, **kwargs: object) -> None:
        raise OperationalError("broker gone")

    monkeypatch.setattr(app, "send_task", send_task)

    assert batch_pump.dispatch_releases(created.releases) == 0
    with session_scope() as s:
        assert {r.dispatch_count for r in requests_of(created.batch.id)} == {1}
        redispatch = {request_id for request_id, _, _ in _claim_redispatch(s, 100)}
        s.rollback()
    assert redispatch == set()  # not stale yet: the sweeper rings them later


@pytest.mark.parametrize(
    ("outstanding", "boot"), [(Action.ON, None), (Action.ON, "pxe"), (Action.OFF, "disk")]
)
def test_a_refused_node_says_what_a_single_request_would_be_told(
    session: Session, outstanding: Action, boot: str | None
) -> None:
    from powerq.errors import ConflictingRequest
    from powerq.states import BootDevice

    (name,) = _nodes(session, 1)
    device = BootDevice(boot) if boot else None
    request_power(session, find_node(session, name), outstanding, actor="bob", boot_device=device)
    session.commit()
    with pytest.raises(ConflictingRequest) as single:
        request_power(session, find_node(session, name), Action.OFF, actor="ops")
    session.rollback()

    (member,) = create(session, spec(Action.OFF, [name])).members

    assert (member.outcome, member.detail) == ("refused", single.value.detail)
