"""Statement budget of ``POST /v1/nodes/{name}/power`` (issue 15): at most 3 SQL
statements with authentication, counted on the engine (``before_cursor_execute``)
through the test client with a real token. Counts, never timings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from powerq.tokens import token_cache
from tests.factories import make_node
from tests.statements import count_statements

POST_BUDGET = 3


@pytest.fixture
def cold_cache() -> Iterator[None]:
    """No token verified yet in this process."""
    token_cache.clear()
    yield
    token_cache.clear()


@pytest.fixture
def nodes(session: Session) -> list[str]:
    return [make_node(session, f"node-{i}").name for i in range(3)]


def _post(client: FlaskClient, node: str, headers: dict[str, str], action: str = "on") -> int:
    response = client.post(f"/v1/nodes/{node}/power", json={"action": action}, headers=headers)
    return response.status_code


def test_a_new_request_with_a_token_not_yet_seen_is_within_budget(
    client: FlaskClient, operator: dict[str, str], nodes: list[str], cold_cache: None
) -> None:
    with count_statements() as statements:
        assert _post(client, nodes[0], operator) == 202

    assert len(statements) <= POST_BUDGET, statements
    assert len(statements) == 2  # the token (and its last use), then the intent


def test_a_new_request_with_a_token_just_seen_is_one_statement(
    client: FlaskClient, operator: dict[str, str], nodes: list[str], cold_cache: None
) -> None:
    assert _post(client, nodes[0], operator) == 202

    with count_statements() as statements:
        assert _post(client, nodes[1], operator) == 202

    assert len(statements) == 1, statements


def test_a_new_request_with_an_idempotency_key_is_within_budget(
    client: FlaskClient, operator: dict[str, str], nodes: list[str], cold_cache: None
) -> None:
    assert _post(client, nodes[0], operator) == 202
    keyed = {**operator, "Idempotency-Key": "budget-1"}

    with count_statements() as statements:
        assert _post(client, nodes[1], keyed) == 202

    # the earlier answer looked up, the intent, the answer stored
    assert len(statements) <= POST_BUDGET, statements


def test_its_replay_is_one_statement(
    client: FlaskClient, operator: dict[str, str], nodes: list[str], cold_cache: None
) -> None:
    keyed = {**operator, "Idempotency-Key": "budget-2"}
    assert _post(client, nodes[0], keyed) == 202

    with count_statements() as statements:
        assert _post(client, nodes[0], keyed) == 202

    assert len(statements) == 1, statements


@pytest.mark.parametrize(("second", "status"), [("on", 200), ("off", 409)])
def test_an_outstanding_request_is_answered_in_a_bounded_number_of_statements(
    client: FlaskClient,
    operator: dict[str, str],
    nodes: list[str],
    cold_cache: None,
    second: str,
    status: int,
) -> None:
    assert _post(client, nodes[0], operator) == 202

    with count_statements() as statements:
        assert _post(client, nodes[0], operator, second) == status

    # the one-statement attempt, then the step-by-step path that answers it
    assert len(statements) <= 8, statements
