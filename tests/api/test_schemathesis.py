"""Schemathesis against the served OpenAPI document, with a valid admin token.

Every operation gets generated positive and negative cases (examples, coverage
and fuzzing phases, derandomised so CI is repeatable). Each response must be
no 5xx, a documented status with a documented content type and a body that
matches its schema; valid input must be accepted and invalid input refused.
The run must reach at least ``MIN_CASES`` cases.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from apiflask import APIFlask
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import negative_data_rejection
from sqlalchemy.orm import Session

from powerq.api import idempotency
from powerq.models import ApiToken
from powerq.tokens import hash_token
from tests.factories import make_node

MIN_CASES = 500
# Far from the small ids the fuzzer tries, so DELETE /v1/tokens/{id} cannot
# revoke the token the run itself uses.
ADMIN_TOKEN_ID = 7_654_321
ADMIN_TOKEN = "pq_schemathesis-admin-token"

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def api_schema(app: APIFlask, session: Session) -> Any:
    """The document as the app serves it, against a database holding one node."""
    make_node(session, "node-1", tags=("rack1",))
    session.add(
        ApiToken(
            id=ADMIN_TOKEN_ID, name="schemathesis", role="admin", token_hash=hash_token(ADMIN_TOKEN)
        )
    )
    session.commit()
    return schemathesis.openapi.from_wsgi("/v1/openapi.json", app)


@pytest.fixture
def case_count() -> Iterator[list[int]]:
    """Counts the cases run; fails the test if there were fewer than MIN_CASES."""
    counter = [0]
    yield counter
    print(f"schemathesis ran {counter[0]} cases")
    assert counter[0] >= MIN_CASES, f"only {counter[0]} schemathesis cases ran"


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_openapi_document(case: Any, case_count: list[int]) -> None:
    _fresh_idempotency_key(case)
    _no_node_options_without_a_known_driver(case)
    case.call_and_validate(
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        excluded_checks=_undeliverable_negative_checks(case),
    )
    case_count[0] += 1


def _undeliverable_negative_checks(case: Any) -> list[Any]:
    """A case made invalid through its headers is sent with the run's valid
    Authorization instead (one header the document requires), so it may reach
    the API as a valid request: its "invalid data was refused" check is
    dropped. Its other checks (no 5xx, documented status and body) stay.
    Missing or bad tokens are tested in test_auth.py.
    """
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return []
    header = meta.components.get(ParameterLocation.HEADER)
    return [negative_data_rejection] if header and header.mode.is_negative else []


def _fresh_idempotency_key(case: Any) -> None:
    """Drop a generated ``Idempotency-Key``.

    A key names one call: reusing it for a different call is refused (422), a
    rule about history that the document cannot express, and a stateless
    fuzzer that draws "0" again and again (and re-runs cases while shrinking)
    trips over it. Keys, well-formed and malformed, are tested in
    test_idempotency.py instead.
    """
    if case.headers:
        case.headers.pop(idempotency.HEADER, None)


# Node options whose validity the document cannot express: a CA bundle must
# parse as PEM certificates, a Kg given as 0x + hex needs an even digit count.
_UNSCHEMATIC_OPTIONS = ("ca_bundle", "ipmi_kg")


def _no_node_options_without_a_known_driver(case: Any) -> None:
    """Drop node options the document cannot judge.

    A PATCH that names no driver is checked against the node's current driver
    (node-1 is a sim node, which takes no option), a fact about stored state;
    and a CA bundle or Kg must also parse. tests/api/test_node_options.py tests
    all of them instead.
    """
    body = case.body if isinstance(case.body, dict) else None
    if body is None or case.operation.path not in ("/v1/nodes", "/v1/nodes/{name}"):
        return
    if case.meta is not None and case.meta.generation.mode.is_negative:
        return  # an invalid body stays invalid: its refusal is what is checked
    for name in _UNSCHEMATIC_OPTIONS:
        body.pop(name, None)
    if case.method.upper() == "PATCH" and "driver" not in body:
        for name in ("system", "verify_tls", "ipmi_cipher_suite", "ipmi_privilege"):
            body.pop(name, None)
