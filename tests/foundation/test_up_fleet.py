"""``powerq up`` re-registers its simulated fleet on whatever ports the fleet got
this time, without ever putting two live nodes on one BMC endpoint."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from powerq.inventory import NodeSpec
from powerq.models import Node
from powerq.states import DriverKind
from powerq.up import _register_fleet


def _fleet(base: int, count: int = 4) -> list[NodeSpec]:
    return [
        NodeSpec(f"sim-{i}", DriverKind.IPMI, "127.0.0.1", base + i, "admin", "pw", ("sim",))
        for i in range(count)
    ]


def _ports(session: Session) -> dict[str, int]:
    session.expire_all()
    return {node.name: node.bmc_port for node in session.scalars(select(Node))}


def test_a_fleet_restarted_on_overlapping_ports_moves_every_node(session: Session) -> None:
    assert _register_fleet(session, _fleet(20000)) == []
    session.commit()

    for base in (20002, 19999):  # up, then down, each overlapping the previous range
        assert _register_fleet(session, _fleet(base)) == []
        session.commit()
        assert _ports(session) == {f"sim-{i}": base + i for i in range(4)}


def test_a_port_a_stranger_holds_is_reported_not_taken(session: Session) -> None:
    _register_fleet(session, [NodeSpec("other", DriverKind.IPMI, "127.0.0.1", 20001, "a", "p")])
    session.commit()

    refused = _register_fleet(session, _fleet(20000))
    session.commit()

    assert [(outcome.name, outcome.detail) for outcome in refused] == [
        ("sim-1", "BMC 127.0.0.1:20001 is already registered as node 'other'")
    ]
    assert sorted(_ports(session)) == ["other", "sim-0", "sim-2", "sim-3"]
