"""Races the friendly checks cannot see: the database decides, and the loser gets
the same answer the checks give (never an IntegrityError or a request on a
deleted node). Each test holds one transaction open while another blocks on it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from powerq.errors import BmcEndpointTaken, Conflict, NotFound
from powerq.intents import find_node, request_power
from powerq.inventory import NodeChanges, NodeSpec, create_node, delete_node, update_node
from powerq.states import Action, DriverKind

BLOCKED_S = 0.5


def _spec(name: str, address: str, port: int = 623) -> NodeSpec:
    return NodeSpec(name, DriverKind.SIM, address, port, "admin", "pw")


@pytest.fixture
def sessions(db: None) -> Iterator[sessionmaker[Session]]:
    """The suite's session factory (each test opens the sessions it races)."""
    from powerq.db import session_factory

    yield session_factory()


class Racer(threading.Thread):
    """Runs ``work`` in its own thread and keeps what it returned or raised."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def blocked(self) -> bool:
        """Whether it is still waiting after :data:`BLOCKED_S`."""
        self.join(BLOCKED_S)
        return self.is_alive()

    def finish(self) -> None:
        """Wait for it to end."""
        self.join(30)
        assert not self.is_alive()


def _committed(session: Session, work: Callable[[], Any]) -> Any:
    result = work()
    session.commit()
    return result


def test_a_registration_racing_onto_one_bmc_gets_the_409(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as first, sessions() as second:
        create_node(first, _spec("n1", "BMC-1.example"), actor="a")  # written, not committed
        racer = Racer(
            lambda: _committed(
                second, lambda: create_node(second, _spec("n2", "bmc-1.EXAMPLE"), actor="b")
            )
        )
        racer.start()
        assert racer.blocked()  # on the index entry of the uncommitted row
        first.commit()
        racer.finish()

    assert isinstance(racer.error, BmcEndpointTaken)
    assert racer.error.detail == "BMC bmc-1.EXAMPLE:623 is already registered as node 'n1'"
    assert racer.error.extra == {"existing_node": "n1"}


def test_a_registration_racing_for_one_name_gets_the_409(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as first, sessions() as second:
        create_node(first, _spec("n1", "10.0.0.1"), actor="a")
        racer = Racer(lambda: create_node(second, _spec("n1", "10.0.0.2"), actor="b"))
        racer.start()
        assert racer.blocked()
        first.commit()
        racer.finish()

    assert type(racer.error) is Conflict
    assert racer.error.detail == "a node named 'n1' already exists"


def test_a_change_racing_onto_one_bmc_gets_the_409_and_changes_nothing(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as setup:
        create_node(setup, _spec("n2", "10.0.0.2"), actor="a")
        setup.commit()
    with sessions() as first, sessions() as second:
        create_node(first, _spec("n1", "10.0.0.1", 6230), actor="a")

        def move() -> list[str]:
            node = find_node(second, "n2", lock=True)
            return update_node(second, node, NodeChanges(address="10.0.0.1", port=6230), actor="b")

        racer = Racer(move)
        racer.start()
        assert racer.blocked()
        first.commit()
        racer.finish()
        second.rollback()

    assert isinstance(racer.error, BmcEndpointTaken)
    assert racer.error.extra == {"existing_node": "n1"}
    with sessions() as check:
        node = find_node(check, "n2")
        assert (node.bmc_address, node.bmc_port) == ("10.0.0.2", 623)


def test_a_power_request_racing_a_delete_finds_no_node(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as setup:
        create_node(setup, _spec("n1", "10.0.0.1"), actor="a")
        setup.commit()
    with sessions() as requester, sessions() as deleter:
        node = find_node(requester, "n1")  # read before the delete
        delete_node(deleter, "n1", actor="admin")  # holds the node row
        racer = Racer(lambda: request_power(requester, node, Action.ON, actor="op"))
        racer.start()
        assert racer.blocked()
        deleter.commit()
        racer.finish()
        requester.rollback()

    assert isinstance(racer.error, NotFound)


def test_a_delete_racing_a_power_request_sees_it_outstanding(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as setup:
        create_node(setup, _spec("n1", "10.0.0.1"), actor="a")
        setup.commit()
    with sessions() as requester, sessions() as deleter:
        intent = request_power(requester, find_node(requester, "n1"), Action.ON, actor="op")
        racer = Racer(lambda: delete_node(deleter, "n1", actor="admin"))
        racer.start()
        assert racer.blocked()
        request_id = intent.request.id
        requester.commit()
        racer.finish()
        assert isinstance(racer.error, Conflict)
        assert racer.error.extra["outstanding"].id == request_id
        deleter.rollback()
