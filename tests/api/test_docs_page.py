"""No API docs page (it would run CDN script where tokens are pasted); the
OpenAPI document stays, and the status page keeps its strict CSP."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from powerq.api.ui import CONTENT_SECURITY_POLICY
from tests.api.helpers import assert_problem


@pytest.mark.parametrize("path", ["/v1/docs", "/docs", "/v1/docs/oauth2-redirect", "/redoc"])
def test_there_is_no_docs_page(client: FlaskClient, path: str) -> None:
    assert_problem(client.get(path), 404)


def test_the_openapi_document_is_still_served(client: FlaskClient) -> None:
    answer = client.get("/v1/openapi.json")

    assert answer.status_code == 200
    assert answer.get_json()["openapi"] == "3.1.0"
    assert "/v1/docs" not in answer.get_data(as_text=True)


def test_the_status_page_keeps_its_csp(client: FlaskClient) -> None:
    answer = client.get("/")

    assert answer.status_code == 200
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
