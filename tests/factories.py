"""Small builders for test rows (real database, committed)."""

from __future__ import annotations

import itertools

from sqlalchemy.orm import Session

from powerq.inventory import NodeSpec, create_node
from powerq.models import Node
from powerq.states import DriverKind

SECRET = "s3cr3t-Bmc-Pa55w0rd"
# One BMC endpoint per node (uq_nodes_bmc_endpoint): each node made without an
# explicit port gets the next one of these, far from the ports tests spell out.
_PORTS = itertools.count(40000)


def next_port() -> int:
    """A BMC port no other node made by these helpers has (wraps after 25000)."""
    return 40000 + (next(_PORTS) - 40000) % 25000


def make_node(
    session: Session,
    name: str = "node-1",
    *,
    driver: DriverKind = DriverKind.SIM,
    address: str = "127.0.0.1",
    port: int | None = None,
    password: str = SECRET,
    tags: tuple[str, ...] = (),
) -> Node:
    """Register and commit one node (on its own BMC port unless ``port`` is given)."""
    spec = NodeSpec(
        name, driver, address, next_port() if port is None else port, "admin", password, tags
    )
    node = create_node(session, spec, actor="test")
    session.commit()
    return node
