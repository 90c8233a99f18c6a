"""A BMC password is never shown: not in reprs, logs, events or stored columns."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from powerq.inventory import NodeSpec, bmc_target
from powerq.models import Node, PowerEvent
from powerq.states import DriverKind
from tests.factories import SECRET, make_node


def test_password_is_encrypted_at_rest_and_decrypts_for_the_executor(session: Session) -> None:
    node = make_node(session)
    raw = session.execute(text("SELECT bmc_password_encrypted FROM nodes")).scalar_one()
    assert SECRET.encode() not in bytes(raw)
    assert bmc_target(node).password == SECRET


def test_password_never_in_reprs(session: Session) -> None:
    spec = NodeSpec("n1", DriverKind.SIM, "127.0.0.1", 623, "admin", SECRET)
    node = make_node(session, password=SECRET)
    for shown in (repr(spec), str(spec), repr(node), repr(bmc_target(node)), str(bmc_target(node))):
        assert SECRET not in shown


def test_password_never_logged(session: Session, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)
    try:
        node = make_node(session, password=SECRET)
        bmc_target(node)
        session.scalars(select(Node)).all()
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    assert caplog.records, "the engine log was captured (the test can see parameters)"
    assert all(SECRET not in record.getMessage() for record in caplog.records)


def test_password_never_in_events(session: Session) -> None:
    make_node(session, password=SECRET)
    events = session.scalars(select(PowerEvent)).all()
    assert events
    assert all(SECRET not in repr((e.message, e.detail)) for e in events)
