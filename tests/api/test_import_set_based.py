"""The set-based import: the same outcomes and rows as importing row by row, in a
number of statements that does not grow with the manifest."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from powerq import imports
from powerq.config import get_settings
from powerq.db import utcnow
from powerq.inventory import ImportOutcome, NodeSpec, import_node
from powerq.models import Node, PowerEvent
from powerq.node_options import NodeOptions
from powerq.secrets import decrypt_password
from powerq.states import DriverKind
from powerq.tokens import token_cache
from tests.factories import make_node
from tests.statements import count_statements

# Statements of one POST /v1/nodes/import, whatever its length: the token check
# (at most 2 today), 2 reads, a savepoint, 3 writes and the savepoint's release.
IMPORT_POST_BUDGET = 9
# The inventory's part alone: 2 reads, savepoint, 3 writes, release.
IMPORT_BUDGET = 7
Rows = list[tuple[int, NodeSpec]]


@pytest.fixture
def all_drivers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("POWERQ_DRIVERS", "ipmi,redfish,sim")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def _spec(name: str, address: str, port: int = 623, **extra: Any) -> NodeSpec:
    fields: dict[str, Any] = {"driver": DriverKind.IPMI, "username": "admin", "password": "pw"}
    return NodeSpec(name=name, address=address, port=port, **{**fields, **extra})


def _numbered(specs: list[NodeSpec]) -> Rows:
    return list(enumerate(specs, start=1))


def _state(session: Session) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every node (by name, password decrypted) and every event (in order), id-free."""
    session.expire_all()
    nodes = sorted(
        (
            n.name,
            n.driver,
            n.bmc_address,
            n.bmc_port,
            n.bmc_username,
            n.tags,
            n.bmc_system,
            n.verify_tls,
            n.ca_bundle,
            n.ipmi_cipher_suite,
            n.ipmi_privilege,
            n.ipmi_kg_encrypted is not None,
            n.deleted_at is not None,
            decrypt_password(n.bmc_password_encrypted),
        )
        for n in session.scalars(select(Node))
    )
    events = session.execute(
        select(Node.name, PowerEvent.kind, PowerEvent.actor, PowerEvent.message, PowerEvent.detail)
        .join(Node, Node.id == PowerEvent.node_id)
        .order_by(PowerEvent.id)
    ).all()
    return nodes, [tuple(row) for row in events]


Importer = Callable[[Session, Rows, bool], list[ImportOutcome]]


def row_by_row(session: Session, rows: Rows, update: bool) -> list[ImportOutcome]:
    return [import_node(session, n, spec, update=update, actor="t") for n, spec in rows]


def set_based(session: Session, rows: Rows, update: bool) -> list[ImportOutcome]:
    return imports.import_nodes(session, rows, update=update, actor="t")


def _outcome_and_state(
    session: Session, importer: Importer, rows: Rows, update: bool
) -> tuple[list[ImportOutcome], Any]:
    """What ``importer`` reports and leaves, rolled back afterwards."""
    outcomes = importer(session, rows, update)
    session.flush()
    state = _state(session)
    session.rollback()
    return outcomes, state


def _existing(session: Session) -> None:
    """Live nodes a..c, and a deleted one named 'gone' on bmc-d."""
    for name, address in (("a", "bmc-a"), ("b", "bmc-b"), ("c", "bmc-c"), ("gone", "bmc-d")):
        make_node(session, name, driver=DriverKind.IPMI, address=address, port=623)
    gone = session.scalars(select(Node).where(Node.name == "gone")).one()
    gone.deleted_at = utcnow()
    session.commit()


SCENARIOS: dict[str, tuple[bool, list[NodeSpec]]] = {
    "new, existing, deleted, duplicate names": (
        False,
        [_spec("n1", "bmc-n1"), _spec("a", "bmc-x"), _spec("gone", "bmc-d"), _spec("n1", "h")],
    ),
    "endpoints taken by nodes and earlier rows, in any case": (
        False,
        [_spec("n1", "BMC-A"), _spec("n2", "bmc-n"), _spec("n3", "BMC-N"), _spec("n4", "bmc-n", 9)],
    ),
    "update moves, a new node takes the endpoint a node left": (
        True,
        [_spec("a", "bmc-z"), _spec("n1", "bmc-a"), _spec("b", "bmc-b", tags=("r1",))],
    ),
    "update onto an endpoint not yet left is refused": (
        True,
        [_spec("n1", "bmc-a"), _spec("a", "bmc-z"), _spec("c", "bmc-a")],
    ),
    "a row updates a node created by an earlier row": (
        True,
        [_spec("n1", "h1"), _spec("n1", "h2", 624, password="other", tags=("x", "x"))],
    ),
    "invalid rows change nothing": (
        True,
        [_spec("n1", "h1", 0), _spec("a", "h2", tags=("-bad",)), _spec("n2", "h3", tags=("ok",))],
    ),
    "options and drivers": (
        True,
        [
            _spec(
                "r1",
                "rf",
                443,
                driver=DriverKind.REDFISH,
                options=NodeOptions(system="/redfish/v1/Systems/1"),
            ),
            _spec(
                "r2",
                "rf",
                443,
                driver=DriverKind.REDFISH,
                options=NodeOptions(system="/redfish/v1/Systems/2", verify_tls=False),
            ),
            _spec(
                "r3",
                "rf",
                443,
                driver=DriverKind.REDFISH,
                options=NodeOptions(system="/redfish/v1/Systems/1"),
            ),
            _spec("a", "bmc-a", options=NodeOptions(ipmi_kg="0x0102", ipmi_privilege="operator")),
            _spec("b", "bmc-b", options=NodeOptions(system="/redfish/v1/Systems/1")),
            _spec("c", "rf", 443, driver=DriverKind.REDFISH),
        ],
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_set_based_import_does_what_row_by_row_does(
    all_drivers: None, session: Session, scenario: str, caplog: pytest.LogCaptureFixture
) -> None:
    update, specs = SCENARIOS[scenario]
    _existing(session)
    rows = _numbered(specs)

    expected = _outcome_and_state(session, row_by_row, rows, update)
    with caplog.at_level(logging.INFO, logger="powerq.imports"):
        got = _outcome_and_state(session, set_based, rows, update)

    assert got == expected
    assert "row by row" not in caplog.text  # the plan was written as planned


@pytest.mark.parametrize("seed", range(6))
def test_random_manifests_match_row_by_row(all_drivers: None, session: Session, seed: int) -> None:
    """Few names and endpoints, so rows collide, move, repeat and refuse each other."""
    rng = random.Random(seed)
    _existing(session)
    names = ["a", "b", "c", "gone", "n1", "n2", "n3"]
    addresses = ["bmc-a", "BMC-B", "bmc-c", "bmc-d", "bmc-e"]
    specs = [
        _spec(
            rng.choice(names),
            rng.choice(addresses),
            rng.choice([623, 623, 624, 0]),
            driver=rng.choice([DriverKind.IPMI, DriverKind.SIM]),
            password=rng.choice(["pw", "pw2"]),
            tags=tuple(rng.sample(["r1", "r2", "gpu", "-bad"], rng.randint(0, 2))),
        )
        for _ in range(30)
    ]
    rows = _numbered(specs)
    for update in (False, True):
        expected = _outcome_and_state(session, row_by_row, rows, update)
        assert _outcome_and_state(session, set_based, rows, update) == expected


def _manifest(count: int, existing: int) -> list[dict[str, Any]]:
    """``count`` rows: ``existing`` of them move nodes made by :func:`_seed`, then new
    ones, one with a bad name and one on the endpoint of ``new-0`` (an earlier row)."""
    rows = [
        {"name": f"seed-{i}", "driver": "ipmi", "address": f"moved-{i}.invalid",
         "username": "admin", "password": "pw", "tags": ["r1"]}
        for i in range(existing)
    ] + [
        {"name": f"new-{i}", "driver": "ipmi", "address": f"new-{i}.invalid",
         "username": "admin", "password": "pw"}
        for i in range(count - existing - 2)
    ]  # fmt: skip
    bad = {"name": "bad name", "driver": "ipmi", "address": "x", "username": "u", "password": "p"}
    taken = {**bad, "name": "taker", "address": "new-0.invalid"}
    return [*rows, bad, taken]


def _seed(client: FlaskClient, admin: dict[str, str], existing: int) -> list[str]:
    """Import ``existing`` nodes; the statements that took."""
    rows = [
        {"name": f"seed-{i}", "driver": "ipmi", "address": f"seed-{i}.invalid",
         "username": "admin", "password": "pw"}
        for i in range(existing)
    ]  # fmt: skip
    with count_statements() as statements:
        report = client.post("/v1/nodes/import", json=rows, headers=admin).get_json()
    assert report["summary"]["created"] == existing
    return statements


def _update_import(
    client: FlaskClient, admin: dict[str, str], count: int
) -> tuple[list[str], list[str]]:
    """Import ``count // 3`` nodes, then update-import ``count`` rows over them; the
    statements each POST took."""
    existing = count // 3
    token_cache.clear()  # both runs start with the token not yet verified (it is cached)
    seeded = _seed(client, admin, existing)
    with count_statements() as statements:
        response = client.post(
            "/v1/nodes/import?mode=update", json=_manifest(count, existing), headers=admin
        )
    summary = response.get_json()["summary"]
    assert summary == {"created": count - existing - 2, "updated": existing, "skipped": 0,
                       "invalid": 2}  # fmt: skip
    return seeded, statements


def test_an_import_takes_the_same_statements_for_10_rows_as_for_300(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    small = _update_import(client, admin, 10)
    session.execute(PowerEvent.__table__.delete())
    session.execute(Node.__table__.delete())
    session.commit()
    large = _update_import(client, admin, 300)

    assert [len(s) for s in small] == [len(s) for s in large], large
    assert max(len(s) for s in large) <= IMPORT_POST_BUDGET, large


def test_the_inventory_import_takes_a_fixed_number_of_statements(
    session: Session,
) -> None:
    _existing(session)
    for count in (10, 300):
        new = [_spec(f"x{i}", f"x{i}") for i in range(count)]
        rows = _numbered([_spec("a", "bmc-a2"), _spec("b", "bmc-c"), *new])
        with count_statements() as statements:
            outcomes = imports.import_nodes(session, rows, update=True, actor="t")
        session.rollback()
        assert [o.outcome for o in outcomes[:2]] == ["updated", "invalid"]
        assert len(statements) == IMPORT_BUDGET, statements


@pytest.mark.parametrize("update", [False, True])
def test_a_concurrent_registration_on_a_planned_endpoint_is_reported_like_row_by_row(
    session: Session, monkeypatch: pytest.MonkeyPatch, update: bool
) -> None:
    """Another client registers on an endpoint the plan counted as free, between the
    import's reads and writes: the unique index refuses the write, and the import
    is redone row by row, which reports that row as taken and applies the others."""
    _existing(session)
    planned = imports.plan_import

    def plan_then_intrude(*args: Any, **kwargs: Any) -> imports.ImportPlan:
        plan = planned(*args, **kwargs)
        from powerq.db import session_factory

        with session_factory()() as other:
            make_node(other, "intruder", driver=DriverKind.IPMI, address="wanted", port=623)
        return plan

    monkeypatch.setattr(imports, "plan_import", plan_then_intrude)
    mover = "a" if update else "n0"
    rows = _numbered([_spec("n1", "free"), _spec(mover, "wanted"), _spec("n2", "free2")])

    outcomes = imports.import_nodes(session, rows, update=update, actor="t")
    session.commit()

    assert [o.outcome for o in outcomes] == ["created", "invalid", "created"]
    assert outcomes[1].detail == "BMC wanted:623 is already registered as node 'intruder'"
    live = session.scalars(select(Node.name).where(Node.deleted_at.is_(None))).all()
    assert sorted(live) == ["a", "b", "c", "intruder", "n1", "n2"]


def test_a_redfish_node_moved_without_a_system_path_keeps_its_own_which_may_be_taken(
    all_drivers: None, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    system = NodeOptions(system="/redfish/v1/Systems/1")
    first = [
        _spec("r1", "rf-old", 443, driver=DriverKind.REDFISH, options=system),
        _spec("r2", "RF-new", 443, driver=DriverKind.REDFISH, options=system),
    ]
    imports.import_nodes(session, _numbered(first), update=False, actor="t")
    session.commit()
    rows = _numbered([_spec("r1", "rf-new", 443, driver=DriverKind.REDFISH)])

    expected = _outcome_and_state(session, row_by_row, rows, True)
    with caplog.at_level(logging.INFO, logger="powerq.imports"):
        got = _outcome_and_state(session, set_based, rows, True)

    assert got == expected
    assert got[0][0].detail == (
        "BMC rf-new:443 system /redfish/v1/Systems/1 is already registered as node 'r2'"
    )
    assert "row by row" not in caplog.text
