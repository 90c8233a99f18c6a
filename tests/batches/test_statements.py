"""Statement budget of creating a batch: a constant number, whatever the node count.

Counts, never timings: every statement the session sends (SQLAlchemy's
``before_cursor_execute``; an executemany counts once) while ``create_batch``
records the batch, its requests, events, desired states and members, and
releases what may start at once.
"""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.orm import Session

from powerq.batches import create_batch
from powerq.intents import find_node, request_power
from powerq.models import Node
from powerq.secrets import encrypt_password
from powerq.states import Action, DriverKind
from powerq.tokens import token_cache
from tests.batches.helpers import spec
from tests.statements import count_statements

# select and hold the nodes, insert the batch, insert requests + events + desired
# states + members, and the pump: lock the batch, count its room, release.
CREATE_BUDGET = 6
# POST /v1/batches: the token check, the creation, then the counts and the first
# page of results.
POST_BUDGET = 9


def _bulk_nodes(session: Session, prefix: str, count: int) -> list[str]:
    """``count`` nodes in one INSERT (make_node one by one is slow at 200)."""
    secret = encrypt_password("secret")
    names = [f"{prefix}{i:04d}" for i in range(count)]
    rows = [
        {"name": name, "driver": DriverKind.SIM, "bmc_address": f"{name}.invalid",
         "bmc_port": 623, "bmc_username": "admin", "bmc_password_encrypted": secret, "tags": []}
        for name in names
    ]  # fmt: skip
    session.execute(insert(Node), rows)
    session.commit()
    return names


def _statements_to_create(session: Session, prefix: str, count: int) -> list[str]:
    """Statements of one batch of ``count`` nodes: one reused, one refused, the rest new."""
    names = _bulk_nodes(session, prefix, count)
    request_power(session, find_node(session, names[0]), Action.OFF, actor="alice")
    request_power(session, find_node(session, names[1]), Action.ON, actor="bob")
    session.commit()
    with count_statements() as statements:
        created = create_batch(
            session, spec(Action.OFF, names, stagger_s=1.0, max_in_flight=5), actor="ops"
        )
    session.commit()
    outcomes = [member.outcome for member in created.members]
    assert outcomes == ["existing", "refused"] + ["created"] * (count - 2)
    assert len(created.releases) == 5
    return statements


def test_creating_a_batch_costs_the_same_few_statements_for_10_or_200_nodes(
    session: Session,
) -> None:
    small = _statements_to_create(session, "small", 10)
    large = _statements_to_create(session, "large", 200)

    assert len(small) == len(large), (small, large)
    assert len(large) <= CREATE_BUDGET, large


def test_creating_a_batch_through_the_api_is_constant_too(
    session: Session, client: object, operator: dict[str, str]
) -> None:
    from flask.testing import FlaskClient

    assert isinstance(client, FlaskClient)
    counts = []
    for prefix, count in (("small", 10), ("large", 200)):
        names = _bulk_nodes(session, prefix, count)
        token_cache.clear()  # both posts start with the token not yet verified
        with count_statements() as statements:
            response = client.post(
                "/v1/batches", json={"action": "on", "nodes": names}, headers=operator
            )
        assert response.status_code == 201, response.get_json()
        assert len(response.get_json()["nodes"]) == count
        counts.append(len(statements))
    assert counts[0] == counts[1] <= POST_BUDGET, counts
