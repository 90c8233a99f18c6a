"""Tokens and roles: 401 without a valid token, 403 for a role that is too small,
the token's name recorded as the actor, only a hash stored."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from powerq.cli import main
from powerq.config import get_settings
from powerq.models import ApiToken, Node
from powerq.tokens import ROLES
from tests.api.helpers import assert_problem
from tests.factories import make_node

ANY_UUID = "00000000-0000-4000-8000-000000000000"

# (method, path, body, least role). Bodies are valid, so a role that passes gets
# past authorisation whatever the view then answers.
ENDPOINTS: list[tuple[str, str, Any, str]] = [
    ("GET", "/v1/nodes", None, "reader"),
    ("GET", "/v1/nodes/node-1", None, "reader"),
    ("GET", "/v1/nodes/node-1/power", None, "reader"),
    ("GET", "/v1/nodes/node-1/requests", None, "reader"),
    ("GET", "/v1/nodes/node-1/events", None, "reader"),
    ("GET", f"/v1/requests/{ANY_UUID}", None, "reader"),
    ("POST", "/v1/nodes/node-1/power", {"action": "query"}, "operator"),
    ("DELETE", f"/v1/requests/{ANY_UUID}", None, "operator"),
    (
        "POST",
        "/v1/nodes",
        {"name": "n2", "driver": "sim", "address": "h", "username": "u", "password": "p"},
        "admin",
    ),
    ("PATCH", "/v1/nodes/node-1", {"maintenance": True}, "admin"),
    ("DELETE", "/v1/nodes/node-1", None, "admin"),
    ("POST", "/v1/nodes/import", [], "admin"),
    ("GET", "/v1/tokens", None, "admin"),
    ("POST", "/v1/tokens", {"role": "reader"}, "admin"),
    ("DELETE", "/v1/tokens/999", None, "admin"),
]
IDS = [f"{method} {path}" for method, path, _, _ in ENDPOINTS]


@pytest.fixture
def node(session: Session) -> Node:
    return make_node(session, "node-1")


def _call(client: FlaskClient, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    return client.open(path, method=method, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body", "least"), ENDPOINTS, ids=IDS)
def test_each_role_gets_exactly_what_it_may(
    client: FlaskClient,
    headers: dict[str, dict[str, str]],
    node: Node,
    method: str,
    path: str,
    body: Any,
    least: str,
) -> None:
    for role in ROLES:
        response = _call(client, method, path, body, headers[role])
        if ROLES.index(role) < ROLES.index(least):
            assert_problem(response, 403)
        else:
            assert response.status_code not in (401, 403), (role, response.get_json())


@pytest.mark.parametrize(("method", "path", "body", "least"), ENDPOINTS, ids=IDS)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer not-a-token", "Basic YWRtaW46YWRtaW4=", "Bearer pq_" + "x" * 300],
)
def test_no_valid_token_is_401(
    client: FlaskClient,
    node: Node,
    method: str,
    path: str,
    body: Any,
    least: str,
    authorization: str | None,
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = _call(client, method, path, body, headers)
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_token_is_401(
    client: FlaskClient, admin: dict[str, str], reader: dict[str, str], session: Session
) -> None:
    token_id = session.scalars(select(ApiToken.id).where(ApiToken.name == "reader-token")).one()
    assert client.get("/v1/nodes", headers=reader).status_code == 200

    revoked = client.delete(f"/v1/tokens/{token_id}", headers=admin)

    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"]
    assert_problem(client.get("/v1/nodes", headers=reader), 401)


def test_health_and_the_openapi_document_need_no_token(client: FlaskClient, db: None) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/openapi.json").status_code == 200


def test_admins_make_tokens_shown_once(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    created = client.post("/v1/tokens", json={"role": "operator", "name": "ci-bot"}, headers=admin)

    assert created.status_code == 201
    token = created.get_json()["token"]
    row = session.scalars(select(ApiToken).where(ApiToken.name == "ci-bot")).one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    listed = client.get("/v1/tokens", headers=admin)
    assert token not in listed.get_data(as_text=True)
    assert row.token_hash not in listed.get_data(as_text=True)
    assert {t["name"] for t in listed.get_json()["items"]} >= {"ci-bot", "admin-token"}
    assert client.get("/v1/nodes", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_the_token_name_is_the_actor(
    client: FlaskClient, admin: dict[str, str], node: Node
) -> None:
    token = client.post(
        "/v1/tokens", json={"role": "operator", "name": "night-shift"}, headers=admin
    ).get_json()["token"]
    auth = {"Authorization": f"Bearer {token}"}

    request = client.post("/v1/nodes/node-1/power", json={"action": "off"}, headers=auth)
    events = client.get("/v1/nodes/node-1/events", headers=auth).get_json()["items"]

    assert request.get_json()["request"]["requested_by"] == "night-shift"
    assert events[0]["actor"] == "night-shift"


def test_token_use_is_noted(client: FlaskClient, reader: dict[str, str], session: Session) -> None:
    client.get("/v1/nodes", headers=reader)
    row = session.scalars(select(ApiToken).where(ApiToken.name == "reader-token")).one()
    assert row.last_used_at is not None


def test_revoking_an_unknown_token_is_404(client: FlaskClient, admin: dict[str, str]) -> None:
    assert_problem(client.delete("/v1/tokens/4242", headers=admin), 404)
    assert_problem(client.delete(f"/v1/tokens/{2**40}", headers=admin), 404)


@pytest.mark.parametrize("body", [{"role": "root"}, {"role": "admin", "name": "has space"}, {}])
def test_token_bodies_are_validated(
    client: FlaskClient, admin: dict[str, str], body: dict[str, Any]
) -> None:
    assert_problem(client.post("/v1/tokens", json=body, headers=admin), 422)


def test_cli_bootstraps_a_token_in_the_database_printed_once_and_stored_hashed(
    client: FlaskClient, session: Session, node: Node
) -> None:
    url = get_settings().database_url
    assert url
    result = CliRunner().invoke(
        main,
        ["tokens", "create", "--role", "operator", "--name", "cli", "--database-url", url],
        env={"POWERQ_TOKEN": "", "POWERQ_API_URL": "http://127.0.0.1:9"},  # no API involved
    )

    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("pq_")
    row = session.scalars(select(ApiToken).where(ApiToken.name == "cli")).one()
    assert (row.role, row.token_hash) == ("operator", hashlib.sha256(token.encode()).hexdigest())
    response = client.post(
        "/v1/nodes/node-1/power",
        json={"action": "on"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 202


def test_cli_bootstrap_refuses_a_taken_name(db: None) -> None:
    url = get_settings().database_url
    assert url
    argv = ["tokens", "create", "--role", "admin", "--name", "ops", "--database-url", url]
    assert CliRunner().invoke(main, argv).exit_code == 0

    again = CliRunner().invoke(main, argv)

    assert again.exit_code == 1 and "already named 'ops'" in again.output


def test_cli_refuses_an_unknown_role(db: None) -> None:
    result = CliRunner().invoke(main, ["tokens", "create", "--role", "root"])
    assert result.exit_code != 0
    assert "root" in result.output
