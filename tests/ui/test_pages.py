"""The page shells, their assets and GET /v1/whoami, without a browser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from powerq.api import create_app
from powerq.api.ui import CONTENT_SECURITY_POLICY
from powerq.tokens import create_token, revoke_token
from tests.factories import make_node
from tests.ui.conftest import TOKEN_NAMES

STATIC = Path(__file__).resolve().parents[2] / "powerq" / "api" / "static"


@pytest.fixture
def app(db: None) -> APIFlask:
    return create_app()


@pytest.fixture
def client(app: APIFlask) -> FlaskClient:
    return app.test_client()


@pytest.mark.parametrize("role", ["reader", "operator", "admin"])
def test_whoami_names_the_actor_and_role_of_the_token(
    client: FlaskClient, tokens: dict[str, str], role: str
) -> None:
    answer = client.get("/v1/whoami", headers={"Authorization": f"Bearer {tokens[role]}"})
    assert answer.status_code == 200
    assert answer.get_json() == {"actor": TOKEN_NAMES[role], "role": role}


def test_whoami_refuses_a_missing_or_revoked_token(client: FlaskClient, session: Session) -> None:
    assert client.get("/v1/whoami").status_code == 401
    row, plaintext = create_token(session, role="operator", name="gone")
    revoke_token(session, row.id)
    session.commit()
    answer = client.get("/v1/whoami", headers={"Authorization": f"Bearer {plaintext}"})
    assert answer.status_code == 401
    assert answer.mimetype == "application/problem+json"


def test_whoami_is_documented_and_the_pages_are_not(client: FlaskClient) -> None:
    paths = client.get("/v1/openapi.json").get_json()["paths"]
    assert paths["/v1/whoami"]["get"]["security"] == [{"BearerAuth": ["reader"]}]
    assert "/" not in paths and "/nodes/{name}" not in paths


@pytest.mark.parametrize("path", ["/", "/nodes/node-1"])
def test_pages_are_shells_locked_down_by_their_headers(
    client: FlaskClient, session: Session, path: str
) -> None:
    make_node(session, "node-1")
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.mimetype == "text/html"
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    html = answer.get_data(as_text=True)
    assert "<script>" not in html  # no inline script: the policy would refuse it
    if path == "/":  # no data without a token: the browser asks the API for it
        assert "node-1" not in html


def test_the_node_page_takes_node_names_only(client: FlaskClient) -> None:
    assert 'data-node="n.1_x-2"' in client.get("/nodes/n.1_x-2").get_data(as_text=True)
    assert client.get("/nodes/-bad").status_code == 404
    assert client.get("/nodes/a%3Cb").status_code == 404


def test_every_asset_is_served_by_the_app_and_nothing_comes_from_elsewhere(
    client: FlaskClient,
) -> None:
    for path in ("/", "/nodes/node-1"):
        html = client.get(path).get_data(as_text=True)
        links = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert links and all(link.startswith("/") for link in links), links
        for link in links:
            if link.startswith("/ui/static/"):
                assert client.get(link).status_code == 200, link
    for asset in STATIC.iterdir():
        text = asset.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?:|//[a-z]", text), f"{asset.name} refers to another origin"
        assert client.get(f"/ui/static/{asset.name}").status_code == 200
