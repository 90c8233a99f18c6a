"""The database, not application code, allows one outstanding request per node."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from powerq.db import session_factory
from powerq.errors import AlreadyOutstanding
from powerq.intents import insert_outstanding
from powerq.models import PowerRequest
from powerq.states import Action, RequestStatus
from tests.factories import make_node

CONTENDERS = 50


def _contend(node_id: int, barrier: threading.Barrier, outcomes: list[str]) -> None:
    with session_factory()() as session:
        barrier.wait(timeout=30)
        request = PowerRequest(
            node_id=node_id, action=Action.ON, deadline_s=120, requested_by="race"
        )
        try:
            insert_outstanding(session, request)
            session.commit()
            outcomes.append("committed")
        except AlreadyOutstanding as exc:
            session.rollback()
            outcomes.append(f"already-outstanding:{exc.node_id}")
        except Exception as exc:  # recorded, then asserted on below
            outcomes.append(f"unexpected:{type(exc).__name__}:{exc}")


def test_fifty_concurrent_inserts_leave_exactly_one_outstanding(session: Session) -> None:
    node = make_node(session)
    barrier = threading.Barrier(CONTENDERS)
    outcomes: list[str] = []
    threads = [
        threading.Thread(target=_contend, args=(node.id, barrier, outcomes))
        for _ in range(CONTENDERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert Counter(outcomes) == {
        "committed": 1,
        f"already-outstanding:{node.id}": CONTENDERS - 1,
    }
    count = session.scalar(select(func.count()).select_from(PowerRequest))
    assert count == 1


@pytest.mark.parametrize("finished", [RequestStatus.SUCCEEDED, RequestStatus.FAILED])
def test_a_finished_request_does_not_block_the_next(
    session: Session, finished: RequestStatus
) -> None:
    node = make_node(session)
    old = PowerRequest(node_id=node.id, action=Action.ON, deadline_s=1, requested_by="t")
    insert_outstanding(session, old)
    old.status = finished
    session.commit()

    insert_outstanding(
        session, PowerRequest(node_id=node.id, action=Action.OFF, deadline_s=1, requested_by="t")
    )
    session.commit()
    assert session.scalar(select(func.count()).select_from(PowerRequest)) == 2


def test_running_request_blocks_a_second(session: Session) -> None:
    node = make_node(session)
    first = PowerRequest(node_id=node.id, action=Action.ON, deadline_s=1, requested_by="t")
    insert_outstanding(session, first)
    first.status = RequestStatus.RUNNING
    session.commit()

    with pytest.raises(AlreadyOutstanding):
        insert_outstanding(
            session, PowerRequest(node_id=node.id, action=Action.ON, deadline_s=1, requested_by="t")
        )
