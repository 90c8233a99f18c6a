"""Token names are unique among live tokens (409 otherwise), a token may expire
(refused like a revoked one, the cache not stretching it), and the list shows
``expires_at`` and ``last_used_at``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from powerq.models import ApiToken
from powerq.tokens import MAX_EXPIRES_IN_S, TOKEN_CACHE_TTL_S
from tests.api.conftest import FakeClock
from tests.api.helpers import assert_problem

NODES = "/v1/nodes"


def _create(client: FlaskClient, admin: dict[str, str], **body: Any) -> Any:
    return client.post("/v1/tokens", json=body, headers=admin)


def _bearer(created: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {created.get_json()['token']}"}


def _expire_now(session: Session, token_id: int) -> None:
    """Move the token's expiry into the past by PostgreSQL's clock (no sleeping)."""
    session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id)
        .values(expires_at=func.now() - timedelta(seconds=1))
    )
    session.commit()


def test_a_second_live_token_with_a_name_is_409(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    assert _create(client, admin, role="reader", name="ci").status_code == 201

    body = assert_problem(_create(client, admin, role="admin", name="ci"), 409)

    assert body["type"].endswith("/token-name-taken") and "'ci'" in body["detail"]
    assert session.scalar(select(func.count()).where(ApiToken.name == "ci")) == 1


def test_nobody_can_take_the_bootstrap_admins_name(
    client: FlaskClient, admin: dict[str, str]
) -> None:
    assert_problem(_create(client, admin, role="reader", name="admin-token"), 409)


def test_a_revoked_tokens_name_can_be_reused(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    first = _create(client, admin, role="reader", name="rotated").get_json()
    assert client.delete(f"/v1/tokens/{first['id']}", headers=admin).status_code == 200

    again = _create(client, admin, role="reader", name="rotated")

    assert again.status_code == 201
    assert session.scalar(select(func.count()).where(ApiToken.name == "rotated")) == 2


def test_the_index_itself_refuses_a_duplicate(session: Session) -> None:
    session.add_all([ApiToken(name="x", role="reader", token_hash="a" * 64),
                     ApiToken(name="x", role="reader", token_hash="b" * 64)])  # fmt: skip
    with pytest.raises(Exception, match="uq_api_tokens_live_name"):
        session.flush()
    session.rollback()


def test_a_token_works_until_it_expires_then_is_401(
    client: FlaskClient, admin: dict[str, str], session: Session, clock: FakeClock
) -> None:
    created = _create(client, admin, role="reader", name="short", expires_in=1)
    assert created.status_code == 201
    assert client.get(NODES, headers=_bearer(created)).status_code == 200

    _expire_now(session, created.get_json()["id"])
    clock.now += 1.0  # the cache believed it for at most its 1 s left, not the 5 s TTL

    assert TOKEN_CACHE_TTL_S > 1.0
    assert_problem(client.get(NODES, headers=_bearer(created)), 401)


def test_an_expired_token_is_refused_by_the_database_at_once(
    client: FlaskClient, admin: dict[str, str], session: Session, clock: FakeClock
) -> None:
    created = _create(client, admin, role="operator", name="gone", expires_in=3600)
    _expire_now(session, created.get_json()["id"])

    assert_problem(client.get(NODES, headers=_bearer(created)), 401)


def test_expires_at_is_the_database_clock_plus_expires_in(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    created = _create(client, admin, role="reader", name="hour", expires_in=3600).get_json()

    row = session.get(ApiToken, created["id"])
    assert row is not None and row.expires_at is not None
    assert timedelta(seconds=3590) < row.expires_at - row.created_at <= timedelta(seconds=3600)
    assert created["expires_at"].startswith(row.expires_at.strftime("%Y-%m-%dT%H:%M:%S"))


@pytest.mark.parametrize("expires_in", [0, -5, MAX_EXPIRES_IN_S + 1, 1.5, "60", True, None])
def test_expires_in_is_bounded(
    client: FlaskClient, admin: dict[str, str], expires_in: object
) -> None:
    assert_problem(_create(client, admin, role="reader", expires_in=expires_in), 422)


def test_the_list_shows_expiry_and_last_use(
    client: FlaskClient, admin: dict[str, str], reader: dict[str, str]
) -> None:
    _create(client, admin, role="reader", name="temp", expires_in=600)
    client.get(NODES, headers=reader)

    items = {t["name"]: t for t in client.get("/v1/tokens", headers=admin).get_json()["items"]}

    assert items["temp"]["expires_at"] and items["temp"]["last_used_at"] is None
    assert items["reader-token"]["expires_at"] is None
    assert items["reader-token"]["last_used_at"]


def test_migration_renames_live_duplicates_keeping_the_oldest(session: Session) -> None:
    from importlib import import_module

    migration = import_module("powerq.migrations.versions.0006_token_names_and_expiry")
    session.execute(text("DROP INDEX uq_api_tokens_live_name"))
    session.add_all([ApiToken(name="dup", role="reader", token_hash=c * 64) for c in "abc"])
    session.flush()
    first_id = session.scalars(select(ApiToken.id).where(ApiToken.name == "dup")).first()
    assert first_id is not None
    # a live token whose name is what a '-' suffix would have produced
    session.add(ApiToken(name=f"dup-{first_id + 1}", role="reader", token_hash="d" * 64))
    session.flush()
    session.execute(text(migration._RENAME_LATER_DUPLICATES))
    names = session.scalars(select(ApiToken.name).order_by(ApiToken.id)).all()
    session.rollback()  # the index comes back with the rollback

    assert names[0] == "dup" and len(set(names)) == 4
    assert all(name.startswith("dup#") for name in names[1:3])
