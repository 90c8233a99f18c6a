"""Set-based batch creation against concurrent writers: the one-outstanding index
decides, nothing deadlocks, and a node whose request appears mid-statement is
answered with it (existing or refused), never lost."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from powerq.batches import CreatedBatch, create_batch
from powerq.db import session_factory, session_scope
from powerq.intents import find_node, request_power
from powerq.models import PowerEvent, PowerRequest
from powerq.states import OUTSTANDING_STATUSES, Action, DesiredPowerState
from tests.batches.helpers import spec
from tests.batches.test_statements import _bulk_nodes
from tests.statements import count_statements


def _in_threads(*calls: Callable[[], object]) -> list[object]:
    """Run ``calls`` at once (a barrier), each in its own thread; their results."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        barrier.wait(timeout=10)
        try:
            results[index] = call()
        except Exception as exc:  # reported by the assertion on results
            results[index] = exc

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def _batch(action: Action, names: list[str]) -> Callable[[], CreatedBatch]:
    def create() -> CreatedBatch:
        with session_scope() as session:
            return create_batch(session, spec(action, names), actor="ops")

    return create


def _outstanding_per_node() -> dict[int, int]:
    with session_scope() as s:
        rows = s.execute(
            select(PowerRequest.node_id, func.count())
            .where(PowerRequest.status.in_(OUTSTANDING_STATUSES))
            .group_by(PowerRequest.node_id)
        )
        return {node_id: count for node_id, count in rows}


def test_overlapping_batches_at_once_share_the_nodes_without_deadlock(session: Session) -> None:
    names = _bulk_nodes(session, "n", 60)
    forward, backward = names[:40], list(reversed(names[20:]))

    results = _in_threads(
        _batch(Action.OFF, forward), _batch(Action.OFF, backward), _batch(Action.ON, names[10:50])
    )

    assert not [r for r in results if isinstance(r, Exception)], results
    batches = [r for r in results if isinstance(r, CreatedBatch)]
    owner: dict[str, uuid.UUID] = {}
    for created in batches:
        for member in created.members:
            if member.outcome == "created":
                assert member.node not in owner, member.node
                owner[member.node] = member.request_id
    for created in batches:
        for member in created.members:
            assert member.request_id == owner[member.node]  # existing and refused name it
    assert set(owner) == set(names)
    assert set(_outstanding_per_node().values()) == {1}
    with session_scope() as s:
        events = s.scalar(select(func.count()).where(PowerEvent.kind == "requested"))
    assert events == len(names)  # one per request created, none for reused or refused


def test_a_request_committed_during_the_statement_is_answered_not_lost(
    session: Session,
) -> None:
    names = _bulk_nodes(session, "n", 5)
    other = session_factory()()
    busy = request_power(other, find_node(other, names[2]), Action.OFF, actor="alice").request

    # The batch's insert waits for alice's uncommitted request, which commits after
    # the batch's statement took its snapshot: the conflict is seen, the row is not.
    with count_statements() as statements:
        created, _ = _in_threads(_batch(Action.OFF, names), lambda: _later(other, 1.0))

    assert isinstance(created, CreatedBatch), created
    rounds = [s for s in statements if "INSERT INTO batch_members" in s]
    assert len(rounds) == 2  # the node that was not seen is asked again
    by_node = {m.node: m for m in created.members}
    assert (by_node[names[2]].outcome, by_node[names[2]].request_id) == ("existing", busy.id)
    assert [m.outcome for m in created.members].count("created") == 4
    with session_scope() as s:
        desired = find_node(s, names[2]).desired_power_state
    assert desired is DesiredPowerState.OFF


def _later(session: Session, delay: float) -> None:
    """Commit ``session`` after ``delay`` seconds (once; later calls do nothing)."""
    time.sleep(delay)
    if session.in_transaction():
        session.commit()
        session.close()
