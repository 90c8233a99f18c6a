"""Every JSON body goes through one strict parser: UTF-8 JSON, a JSON Content-Type,
no duplicate keys, no NaN, no absurd numbers, bounded nesting. A refusal is a
4xx problem that names the problem and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from powerq.api.jsonbody import MAX_DEPTH, canonical, parse
from powerq.errors import MalformedBody
from powerq.models import ApiToken, Batch, Node
from tests.api.helpers import assert_problem, counts
from tests.factories import make_node
from tests.services import SuiteServices

POWER = "/v1/nodes/node-1/power"
JSON = "application/json"
ENCODING = "the body must be UTF-8 JSON without a byte-order mark"
CONTENT_TYPE = "Content-Type must be application/json"
DUPLICATE_ACTION = "duplicate key 'action' in the JSON body"
NODE = {
    "name": "new-1",
    "driver": "sim",
    "address": "10.0.0.9",
    "username": "admin",
    "password": "pw",
}


@pytest.fixture
def node(session: Session) -> Node:
    return make_node(session, "node-1")


def _queued(services: SuiteServices) -> list[bytes]:
    """Keys of lane queues in the broker (a rung lane leaves one)."""
    return list(redis.Redis.from_url(services.broker_url).scan_iter("powerq.lane*"))


def _rows(session: Session, model: type[Any]) -> int:
    session.expire_all()
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _post(
    client: FlaskClient, headers: dict[str, str], data: bytes, content_type: str | None = JSON
) -> Any:
    if content_type is None:
        return client.post(POWER, data=data, headers=headers)
    return client.post(POWER, data=data, content_type=content_type, headers=headers)


@pytest.mark.parametrize(
    ("data", "content_type", "status", "detail"),
    [
        pytest.param(b'{"action":"query","action":"reset"}', JSON, 400, DUPLICATE_ACTION, id="dup"),
        pytest.param(
            b'{"action":"on","act\\u0069on":"reset"}', JSON, 400, DUPLICATE_ACTION, id="dup-escaped"
        ),
        pytest.param(b'{"action":"on"}', "text/plain", 415, CONTENT_TYPE, id="text-plain"),
        pytest.param(b'{"action":"on"}', None, 415, CONTENT_TYPE, id="no-content-type"),
        pytest.param(
            b'{"action":"on"}', "application/x-www-form-urlencoded", 415, CONTENT_TYPE, id="form"
        ),
        pytest.param(
            b'{"action":"on"}', "application/json; charset=latin-1", 415, CONTENT_TYPE, id="latin-1"
        ),
        pytest.param(
            b'{"action":"on"}',
            "application/json; charset=utf-16",
            415,
            CONTENT_TYPE,
            id="charset-utf-16",
        ),
        pytest.param(b'\xef\xbb\xbf{"action":"on"}', JSON, 400, ENCODING, id="utf-8-bom"),
        pytest.param('{"action":"on"}'.encode("utf-16"), JSON, 400, ENCODING, id="utf-16"),
        pytest.param('{"action":"on"}'.encode("utf-16-le"), JSON, 400, ENCODING, id="utf-16-le"),
        pytest.param('{"action":"on"}'.encode("utf-32"), JSON, 400, ENCODING, id="utf-32"),
        pytest.param('{"action":"on"}'.encode("utf-32-be"), JSON, 400, ENCODING, id="utf-32-be"),
        pytest.param(b'{"action":"o\xffn"}', JSON, 400, ENCODING, id="not-utf-8"),
        pytest.param(b"", JSON, 400, "the request body is empty", id="empty"),
        pytest.param(b"", None, 400, "the request body is empty", id="empty-untyped"),
        pytest.param(b'{"action":"on"', JSON, 400, "malformed JSON body", id="truncated"),
        pytest.param(b"null", JSON, 400, "the JSON body is null", id="null"),
        pytest.param(
            b'{"action":"on","deadline_s":NaN}', JSON, 400, "NaN is not valid JSON", id="nan"
        ),
        pytest.param(
            b'{"action":"on","deadline_s":Infinity}',
            JSON,
            400,
            "Infinity is not valid JSON",
            id="infinity",
        ),
        pytest.param(
            b'{"action":"on","deadline_s":-Infinity}',
            JSON,
            400,
            "-Infinity is not valid JSON",
            id="-infinity",
        ),
        pytest.param(
            b'{"action":"on","deadline_s":1' + b"0" * 4999 + b"}",
            JSON,
            400,
            "a number in the JSON body is longer than 64 characters",
            id="5000-digit-int",
        ),
        pytest.param(
            b'{"action":"on","deadline_s":1.' + b"5" * 5000 + b"}",
            JSON,
            400,
            "a number in the JSON body is longer than 64 characters",
            id="5000-digit-float",
        ),
        pytest.param(
            b'{"action":"on","deadline_s":1e999}',
            JSON,
            400,
            "a number in the JSON body is too large",
            id="1e999",
        ),
        pytest.param(
            b'{"action":"on","x":' + b"[" * 40 + b"]" * 40 + b"}",
            JSON,
            400,
            f"nested more than {MAX_DEPTH} levels",
            id="deep",
        ),
        pytest.param(
            b"[" * 600_000, JSON, 400, f"nested more than {MAX_DEPTH} levels", id="very-deep"
        ),
    ],
)
def test_a_body_that_is_not_strict_json_is_refused_and_changes_nothing(
    client: FlaskClient,
    operator: dict[str, str],
    node: Node,
    session: Session,
    services: SuiteServices,
    data: bytes,
    content_type: str | None,
    status: int,
    detail: str,
) -> None:
    before = counts(session)

    body = assert_problem(_post(client, operator, data, content_type), status)

    assert detail in body["detail"]
    assert "4300" not in body["detail"] and "Traceback" not in body["detail"]
    assert counts(session) == before
    assert _queued(services) == []


def test_the_duplicate_key_detail_is_exact(
    client: FlaskClient, operator: dict[str, str], node: Node
) -> None:
    response = _post(client, operator, b'{"action":"query","action":"reset"}')
    body = assert_problem(response, 400)
    assert body["detail"] == DUPLICATE_ACTION
    assert body["type"] == "https://powerq.dev/problems/malformed-request"


@pytest.mark.parametrize(
    "content_type",
    [
        JSON,
        "application/json; charset=utf-8",
        "Application/JSON; Charset=UTF-8",
        "application/vnd.powerq+json",
    ],
)
def test_json_content_types_are_accepted(
    client: FlaskClient,
    operator: dict[str, str],
    node: Node,
    session: Session,
    services: SuiteServices,
    content_type: str,
) -> None:
    response = _post(client, operator, b'{ "action" : "on" }', content_type)
    assert response.status_code == 202, response.get_data(as_text=True)
    assert counts(session)[0] == 1
    assert _queued(services) != []  # the control: an accepted request does ring a lane


def test_non_ascii_text_in_utf_8_is_accepted(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    data = '{"role": "reader", "name": "caf\u00e9"}'.encode()
    response = client.post("/v1/tokens", data=data, content_type=JSON, headers=admin)
    # The name pattern refuses it, but as a valid document (422), not as an encoding error.
    assert "UTF-8" not in assert_problem(response, 422)["detail"]


def _node_body(duplicate: str) -> bytes:
    return b'{"name":"new-1","driver":"sim","address":"10.0.0.9","username":"a",' + (
        f'"password":"pw",{duplicate}}}'.encode()
    )


@pytest.mark.parametrize(
    ("method", "path", "data", "model"),
    [
        ("POST", "/v1/nodes", _node_body('"name":"other"'), Node),
        ("POST", "/v1/nodes/import", b"[" + _node_body('"name":"other"') + b"]", Node),
        ("POST", "/v1/tokens", b'{"role":"reader","role":"admin"}', ApiToken),
        ("POST", "/v1/batches", b'{"action":"on","selector":{"all":true,"all":false}}', Batch),
    ],
)
def test_every_json_endpoint_refuses_duplicate_keys(
    client: FlaskClient,
    admin: dict[str, str],
    node: Node,
    session: Session,
    method: str,
    path: str,
    data: bytes,
    model: type[Any],
) -> None:
    rows, before = _rows(session, model), counts(session)

    response = client.open(path, method=method, data=data, content_type=JSON, headers=admin)

    assert "duplicate key" in assert_problem(response, 400)["detail"]
    assert _rows(session, model) == rows
    assert counts(session) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/nodes"),
        ("POST", "/v1/nodes/import"),
        ("PATCH", "/v1/nodes/node-1"),
        ("POST", "/v1/tokens"),
        ("POST", "/v1/batches"),
    ],
)
def test_every_json_endpoint_wants_a_json_content_type(
    client: FlaskClient, admin: dict[str, str], node: Node, session: Session, method: str, path: str
) -> None:
    nodes = _rows(session, Node)
    response = client.open(
        path, method=method, data=b'{"tags":["x"]}', content_type="text/plain", headers=admin
    )
    assert assert_problem(response, 415)["detail"].startswith(CONTENT_TYPE)
    assert _rows(session, Node) == nodes


def test_a_patch_with_a_duplicate_key_changes_nothing(
    client: FlaskClient, admin: dict[str, str], node: Node, session: Session
) -> None:
    response = client.patch(
        "/v1/nodes/node-1",
        data=b'{"maintenance":false,"maintenance":true}',
        content_type=JSON,
        headers=admin,
    )
    assert assert_problem(response, 400)["detail"] == "duplicate key 'maintenance' in the JSON body"
    session.expire_all()
    refreshed = session.get(Node, node.id)
    assert refreshed is not None and refreshed.maintenance is False


def test_a_csv_import_is_still_accepted(
    client: FlaskClient, admin: dict[str, str], session: Session
) -> None:
    csv_text = "name,driver,address,port,username,password\nc-1,sim,10.1.0.1,623,admin,pw\n"
    response = client.post(
        "/v1/nodes/import", data=csv_text.encode(), content_type="text/csv", headers=admin
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["summary"]["created"] == 1


def test_an_endpoint_without_a_body_takes_an_empty_one(
    client: FlaskClient, operator: dict[str, str], node: Node
) -> None:
    created = client.post(POWER, json={"action": "on"}, headers=operator).get_json()
    response = client.delete(f"/v1/requests/{created['request']['id']}", headers=operator)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] == "cancelled"


def test_the_strict_parser_unit() -> None:
    assert parse('{"b": [1, 2.5, "x"], "a": {"c": null}}') == {
        "b": [1, 2.5, "x"],
        "a": {"c": None},
    }
    with pytest.raises(MalformedBody, match="duplicate key 'a'"):
        parse('{"x": {"a": 1, "a": 1}}')
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse(nested) is not None
    with pytest.raises(MalformedBody, match="nested"):
        parse("[" + nested + "]")


def test_canonical_form_ignores_order_spacing_escapes_and_number_spelling() -> None:
    one = parse('{"action": "on", "deadline_s": 60.0, "n": "caf\\u00e9"}')
    other = parse('{"n":"caf\u00e9","deadline_s":60,"action":"on"}')
    assert (
        canonical(one) == canonical(other) == ('{"action":"on","deadline_s":60,"n":"caf\\u00e9"}')
    )
    assert canonical(parse('{"deadline_s": 60.5}')) != canonical(parse('{"deadline_s": 60}'))
