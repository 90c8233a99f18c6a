"""Every error is application/problem+json; health; the OpenAPI document."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tests.api.helpers import assert_problem
from tests.factories import make_node


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/nowhere", {}, 404),
        ("GET", "/v1/nodes/x/y/z", {}, 404),
        ("PUT", "/v1/nodes", {}, 405),
        ("DELETE", "/v1/tokens", {}, 405),
        ("POST", "/v1/nodes", {"data": "{", "content_type": "application/json"}, 400),
        ("POST", "/v1/nodes", {"data": "[" * 600_000, "content_type": "application/json"}, 400),
        ("POST", "/v1/nodes", {"data": "x" * 2_000_000, "content_type": "application/json"}, 413),
        ("POST", "/v1/nodes", {"json": {"name": 5}}, 422),
    ],
)
def test_errors_are_problems(
    client: FlaskClient,
    admin: dict[str, str],
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
) -> None:
    body = assert_problem(client.open(path, method=method, headers=admin, **kwargs), status)
    assert "Traceback" not in body["detail"]


def test_405_says_what_is_allowed(client: FlaskClient, admin: dict[str, str]) -> None:
    response = client.put("/v1/nodes", headers=admin)
    assert {"GET", "POST"} <= {m.strip() for m in response.headers["Allow"].split(",")}
    assert "PUT" in assert_problem(response, 405)["detail"]


def test_an_unexpected_error_is_a_500_problem_that_reveals_nothing(
    client: FlaskClient, reader: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("internal secret detail")

    monkeypatch.setattr("powerq.api.nodes.list_nodes", boom)
    body = assert_problem(client.get("/v1/nodes", headers=reader), 500)
    assert "secret" not in body["detail"]


def test_database_down_is_a_503_problem(
    client: FlaskClient, reader: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable() -> Any:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))

    monkeypatch.setattr("powerq.tokens.session_scope", unreachable)  # the token check
    response = client.get("/v1/nodes", headers=reader)
    assert_problem(response, 503)
    assert response.headers["Retry-After"]


def test_health_reports_database_and_broker(client: FlaskClient, db: None) -> None:
    assert client.get("/healthz").get_json() == {
        "status": "ok",
        "database": {"ok": True, "detail": None},
        "broker": {"ok": True, "detail": None},
        "lanes": {"total": 2, "held": 0, "agents": 0},  # no agent runs in this test
    }


def test_health_with_the_broker_down_is_degraded(client: FlaskClient, dead_broker: None) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert (body["status"], body["database"]["ok"], body["broker"]["ok"]) == (
        "degraded",
        True,
        False,
    )


def test_health_with_the_database_down_is_503(
    client: FlaskClient, db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    monkeypatch.setattr("powerq.api.health.get_engine", lambda: dead)
    body = assert_problem(client.get("/healthz"), 503)
    assert body["database"]["ok"] is False
    assert body["broker"]["ok"] is True


def test_the_openapi_document(client: FlaskClient, db: None) -> None:
    spec = client.get("/v1/openapi.json").get_json()

    assert spec["openapi"].startswith("3.1")
    assert {
        "/healthz",
        "/v1/nodes",
        "/v1/nodes/import",
        "/v1/nodes/{name}",
        "/v1/nodes/{name}/power",
        "/v1/nodes/{name}/requests",
        "/v1/nodes/{name}/events",
        "/v1/requests/{request_id}",
        "/v1/tokens",
        "/v1/tokens/{token_id}",
    } <= set(spec["paths"])
    power = spec["paths"]["/v1/nodes/{name}/power"]["post"]
    assert {"200", "202", "409", "422"} <= set(power["responses"])
    assert set(power["responses"]["409"]["content"]) == {"application/problem+json"}
    assert "password" not in spec["components"]["schemas"]["NodeOut"]["properties"]
    assert spec["components"]["schemas"]["NodeIn"]["properties"]["password"]["writeOnly"]
    assert not [name for name in spec["components"]["schemas"] if "." in name]


def test_the_wsgi_entry_builds_the_app(session: Session) -> None:
    from powerq.api import wsgi

    make_node(session, "node-1")
    assert wsgi.app.test_client().get("/healthz").status_code == 200


def test_create_app_is_reexported_lazily() -> None:
    import powerq

    assert powerq.create_app().name == "powerq"
