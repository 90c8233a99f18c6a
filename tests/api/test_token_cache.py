"""Verified tokens are believed for a few seconds per process: revocation still
bites within that TTL, the cache holds hashes only, and ``last_used_at`` is
written only when stale."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from powerq.db import utcnow
from powerq.models import ApiToken
from powerq.tokens import TOKEN_CACHE_TTL_S, create_token, hash_token, token_cache
from tests.api.conftest import FakeClock
from tests.api.helpers import assert_problem
from tests.statements import count_statements

NODES = "/v1/nodes"


@pytest.fixture
def token(session: Session) -> tuple[int, str]:
    """A reader token (id, plaintext)."""
    row, plaintext = create_token(session, role="reader", name="cached-reader")
    session.commit()
    return row.id, plaintext


def _auth(plaintext: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {plaintext}"}


def _revoke_elsewhere(session: Session, token_id: int) -> None:
    """Revoke as another API process would: in the database only."""
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(revoked_at=utcnow()))
    session.commit()


def _token_statements(statements: list[str]) -> int:
    return sum("api_tokens" in statement for statement in statements)


def test_a_burst_of_calls_verifies_the_token_once(
    client: FlaskClient, token: tuple[int, str], clock: FakeClock
) -> None:
    with count_statements() as statements:
        for _ in range(5):
            assert client.get(NODES, headers=_auth(token[1])).status_code == 200

    assert _token_statements(statements) == 1


def test_a_token_revoked_elsewhere_stops_working_once_the_ttl_has_passed(
    client: FlaskClient, token: tuple[int, str], clock: FakeClock, session: Session
) -> None:
    assert client.get(NODES, headers=_auth(token[1])).status_code == 200
    _revoke_elsewhere(session, token[0])

    clock.now += TOKEN_CACHE_TTL_S - 0.5
    assert client.get(NODES, headers=_auth(token[1])).status_code == 200  # within the TTL
    clock.now += 1.0
    assert_problem(client.get(NODES, headers=_auth(token[1])), 401)
    clock.now += 60.0
    assert_problem(client.get(NODES, headers=_auth(token[1])), 401)


def test_a_token_revoked_in_this_process_stops_working_at_once(
    client: FlaskClient,
    token: tuple[int, str],
    clock: FakeClock,
    admin: dict[str, str],
) -> None:
    assert client.get(NODES, headers=_auth(token[1])).status_code == 200

    assert client.delete(f"/v1/tokens/{token[0]}", headers=admin).status_code == 200

    assert_problem(client.get(NODES, headers=_auth(token[1])), 401)


def test_a_refusal_is_not_remembered(
    client: FlaskClient, clock: FakeClock, session: Session
) -> None:
    row, plaintext = create_token(session, role="reader", name="late")
    session.execute(update(ApiToken).where(ApiToken.id == row.id).values(revoked_at=utcnow()))
    session.commit()
    assert_problem(client.get(NODES, headers=_auth(plaintext)), 401)

    session.execute(update(ApiToken).where(ApiToken.id == row.id).values(revoked_at=None))
    session.commit()

    assert client.get(NODES, headers=_auth(plaintext)).status_code == 200


def test_the_cache_holds_hashes_never_tokens(
    client: FlaskClient, token: tuple[int, str], clock: FakeClock
) -> None:
    client.get(NODES, headers=_auth(token[1]))

    remembered = repr(token_cache._entries)
    assert hash_token(token[1]) in remembered
    assert token[1] not in remembered


@pytest.mark.parametrize(("age_s", "rewritten"), [(30, False), (120, True)])
def test_last_used_at_is_written_only_when_stale(
    client: FlaskClient,
    token: tuple[int, str],
    clock: FakeClock,
    session: Session,
    age_s: int,
    rewritten: bool,
) -> None:
    before = utcnow() - timedelta(seconds=age_s)
    session.execute(update(ApiToken).where(ApiToken.id == token[0]).values(last_used_at=before))
    session.commit()

    assert client.get(NODES, headers=_auth(token[1])).status_code == 200

    session.expire_all()
    after = session.scalar(select(ApiToken.last_used_at).where(ApiToken.id == token[0]))
    assert after is not None
    assert (after != before) is rewritten
