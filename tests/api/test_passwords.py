"""A node's BMC password is write-only: no response body and no log line ever holds it."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from apiflask import APIFlask
from flask.testing import FlaskClient

from powerq.api.schemas import NodeIn
from tests.api.helpers import live_server

SECRETS = {
    "create": "Cr3ate-Pa55-7f1c",
    "patch": "Patch-Pa55-20aa",
    "json-import": "J50n-Imp0rt-Pa55",
    "csv-import": "Csv-Imp0rt-Pa55",
    "invalid-row": "Inval1d-R0w-Pa55",
    "rejected-create": "Rej3cted-Pa55-9e",
}


def _node(name: str, password: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "driver": "ipmi",
        "address": "127.0.0.1",
        "port": 623,
        "username": "admin",
        "password": password,
        **extra,
    }


def _exercise(client: FlaskClient, admin: dict[str, str], operator: dict[str, str]) -> list[bytes]:
    """Every kind of call that carries or could echo a password; the response bodies."""
    calls = [
        client.post("/v1/nodes", json=_node("pw-1", SECRETS["create"]), headers=admin),
        client.post("/v1/nodes", json=_node("pw-1", SECRETS["create"]), headers=admin),  # 409
        client.post(  # 422: a bad field next to the password
            "/v1/nodes", json=_node("bad name", SECRETS["rejected-create"], port=0), headers=admin
        ),
        client.post(  # 422: the password itself is wrong
            "/v1/nodes", json=_node("pw-x", SECRETS["rejected-create"] * 20), headers=admin
        ),
        client.post(  # 400: malformed JSON around a password
            "/v1/nodes",
            data='{"password": "' + SECRETS["rejected-create"] + '",',
            content_type="application/json",
            headers=admin,
        ),
        client.patch("/v1/nodes/pw-1", json={"password": SECRETS["patch"]}, headers=admin),
        client.patch(
            "/v1/nodes/pw-1", json={"password": SECRETS["patch"], "port": "x"}, headers=admin
        ),
        client.post(
            "/v1/nodes/import",
            json=[
                _node("pw-2", SECRETS["json-import"]),
                _node("bad name", SECRETS["invalid-row"]),
                _node("pw-3", SECRETS["invalid-row"], port="nope"),
            ],
            headers=admin,
        ),
        client.post(
            "/v1/nodes/import?mode=update",
            data="name,driver,address,port,username,password\n"
            f"pw-4,ipmi,127.0.0.1,623,admin,{SECRETS['csv-import']}\n"
            f"pw-1,ipmi,127.0.0.1,bad,admin,{SECRETS['invalid-row']}\n",
            content_type="text/csv",
            headers=admin,
        ),
        client.post("/v1/nodes/pw-1/power", json={"action": "on"}, headers=operator),
        client.get("/v1/nodes", headers=admin),
        client.get("/v1/nodes/pw-1", headers=admin),
        client.get("/v1/nodes/pw-1/power", headers=admin),
        client.get("/v1/nodes/pw-1/events", headers=admin),
        client.get("/v1/nodes/pw-1/requests", headers=admin),
    ]
    return [response.get_data() for response in calls]


def _assert_clean(text: str, where: str) -> None:
    for label, secret in SECRETS.items():
        assert secret not in text, f"the {label} password appears in {where}"


def test_no_response_or_log_line_holds_a_password(
    client: FlaskClient,
    admin: dict[str, str],
    operator: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    services: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # statements and parameters
    bodies = _exercise(client, admin, operator)

    for body in bodies:
        _assert_clean(body.decode(), "a response body")
    assert any(record.name.startswith("sqlalchemy") for record in caplog.records)
    for record in caplog.records:
        _assert_clean(record.getMessage(), f"log record {record.name}")
        _assert_clean(repr(record.args), f"log record arguments of {record.name}")
    broker = redis.Redis.from_url(services.broker_url)
    queued = [
        m
        for key in broker.keys("*")
        if broker.type(key) == b"list"
        for m in broker.lrange(key, 0, -1)
    ]
    assert queued  # the power request's wake-up
    for message in queued:
        _assert_clean(message.decode(errors="replace"), "a broker message")


def test_no_log_line_of_the_real_server_holds_a_password(
    app: APIFlask, admin: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    import requests

    caplog.set_level(logging.DEBUG)
    with live_server(app) as base:
        requests.post(
            f"{base}/v1/nodes", json=_node("pw-9", SECRETS["create"]), headers=admin, timeout=10
        )
        requests.get(f"{base}/v1/nodes/pw-9", headers=admin, timeout=10)
    assert caplog.records
    for record in caplog.records:
        _assert_clean(record.getMessage(), f"log record {record.name}")


def test_the_body_model_hides_the_password() -> None:
    body = NodeIn.model_validate(_node("pw-1", SECRETS["create"]))
    assert SECRETS["create"] not in repr(body) + str(body)
    assert SECRETS["create"] not in body.model_dump_json()
    assert SECRETS["create"] not in repr(body.spec())
