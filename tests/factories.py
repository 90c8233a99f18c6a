"""Small builders for test rows (real database, committed)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from powerq.inventory import NodeSpec, create_node
from powerq.models import Node
from powerq.states import DriverKind

SECRET = "s3cr3t-Bmc-Pa55w0rd"


def make_node(
    session: Session,
    name: str = "node-1",
    *,
    driver: DriverKind = DriverKind.SIM,
    address: str = "127.0.0.1",
    port: int = 623,
    password: str = SECRET,
    tags: tuple[str, ...] = (),
) -> Node:
    """Register and commit one node."""
    spec = NodeSpec(name, driver, address, port, "admin", password, tags)
    node = create_node(session, spec, actor="test")
    session.commit()
    return node
