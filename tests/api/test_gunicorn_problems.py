"""The answers gunicorn writes itself (before the application sees the request)
are problem+json too: a real gunicorn with powerq's config, on a loopback port."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.gunicorn_server import running_gunicorn

READ_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def api(services: Any) -> Iterator[tuple[str, int]]:
    """gunicorn as the Procfile runs it (its config, its worker class), 1 worker."""
    with running_gunicorn() as address:
        yield address


def exchange(address: tuple[str, int], raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` and read the whole answer (gunicorn closes after an error)."""
    with socket.create_connection(address, timeout=READ_TIMEOUT_S) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(120)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),
        (b"NOT A REQUEST LINE\r\n\r\n", 400),
    ],
    ids=["request-line-5000-bytes", "header-9000-bytes", "120-headers", "bad-header", "bad-line"],
)
def test_gunicorns_own_errors_are_problems(api: tuple[str, int], raw: bytes, status: int) -> None:
    code, headers, body = exchange(api, raw)

    assert code == status, body
    assert headers["content-type"] == "application/problem+json"
    assert int(headers["content-length"]) == len(body)
    problem = json.loads(body)
    assert problem["status"] == status
    assert problem["type"].startswith("https://powerq.dev/problems/")
    assert problem["title"] and problem["detail"]
    assert "<html" not in body.decode()


def test_the_application_still_answers(api: tuple[str, int]) -> None:
    code, headers, body = exchange(
        api, b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )

    assert code == 404
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 404
