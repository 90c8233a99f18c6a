"""Slow clients cannot stall the API: a real gunicorn with powerq's config and
worker class (powerq/gunicorn_worker.py), attacked over loopback by clients that
send their requests a line at a time and never finish (slowloris)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session

from powerq.tokens import create_token
from tests.api.gunicorn_server import running_gunicorn

# What the issue asks: with 64 slow connections open, answers within 1 s. An
# unprotected gthread (2 processes x 8 threads) never answers while they last.
SLOW_CONNECTIONS = 64
ANSWER_WITHIN_S = 1.0
READ_TIMEOUT_S = 3.0
# Every load loop stops by itself.
ATTACK_LASTS_AT_MOST_S = 30.0
NODE = {"name": "slow-1", "driver": "ipmi", "address": "10.0.0.1", "username": "u", "password": "p"}

Address = tuple[str, int]


@pytest.fixture(scope="module")
def api(services: Any) -> Iterator[Address]:
    """gunicorn as ``powerq up`` runs it: 2 processes x 8 threads."""
    env = {"POWERQ_API_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}
    with running_gunicorn(workers=2, threads=8, env=env) as address:
        yield address


@pytest.fixture
def admin_token(session: Session) -> str:
    _, plaintext = create_token(session, role="admin", name="slow-admin")
    session.commit()
    return plaintext


class Slowloris:
    """``count`` connections, each sending a request head one header line every
    ``interval`` s and never finishing it, until stopped or ``lasting`` s passed."""

    def __init__(self, address: Address, count: int, interval: float = 0.5) -> None:
        self.address, self.count, self.interval = address, count, interval
        self.sockets: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def __enter__(self) -> Slowloris:
        for _ in range(self.count):
            sock = socket.create_connection(self.address, timeout=5)
            sock.sendall(b"POST /v1/nodes HTTP/1.1\r\nHost: powerq\r\n")
            self.sockets.append(sock)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        for sock in self.sockets:
            sock.close()

    def _trickle(self) -> None:
        deadline = time.monotonic() + ATTACK_LASTS_AT_MOST_S
        line = 0
        while not self.stopped.wait(self.interval) and time.monotonic() < deadline:
            line += 1
            for sock in self.sockets:
                try:
                    sock.sendall(b"X-Slow-%d: still coming\r\n" % line)
                except OSError:
                    continue  # the server closed it

    def still_waiting(self) -> int:
        """How many connections the server neither answered nor closed."""
        waiting = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                sock.recv(1, socket.MSG_PEEK)  # returns once answered or closed
            except BlockingIOError:
                waiting += 1
            except OSError:
                pass
            finally:
                sock.setblocking(True)
        return waiting


def timed_request(
    address: Address, method: str, path: str, body: dict[str, Any] | None = None, token: str = ""
) -> tuple[int, str, float]:
    """One request on a new connection: (status, content type, seconds taken).

    :raises TimeoutError: no answer within ``ANSWER_WITHIN_S``.
    """
    started = time.monotonic()
    connection = http.client.HTTPConnection(*address, timeout=ANSWER_WITHIN_S)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Content-Type", ""), time.monotonic() - started
    finally:
        connection.close()


def test_64_slow_clients_leave_health_post_and_status_page_answering(
    api: Address, admin_token: str
) -> None:
    with Slowloris(api, SLOW_CONNECTIONS) as attack:
        time.sleep(4 * attack.interval)  # every connection has sent several lines
        assert attack.still_waiting() == SLOW_CONNECTIONS

        health = timed_request(api, "GET", "/healthz")
        created = timed_request(api, "POST", "/v1/nodes", NODE, admin_token)
        page = timed_request(api, "GET", "/")

        assert attack.still_waiting() == SLOW_CONNECTIONS, "the attack ended before the probes"
    assert (health[0], created[0], page[0]) == (200, 201, 200)
    assert page[1].startswith("text/html")
    assert max(health[2], created[2], page[2]) < ANSWER_WITHIN_S


def test_a_request_not_whole_within_the_read_timeout_gets_a_408_problem(api: Address) -> None:
    with Slowloris(api, 1) as attack:
        sock = attack.sockets[0]
        sock.settimeout(READ_TIMEOUT_S + 5)
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        waited = time.monotonic() - started

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["status"] == 408
    assert waited >= READ_TIMEOUT_S - 1  # it kept trickling for the whole timeout


def test_a_silent_connection_is_closed_after_the_read_timeout(api: Address) -> None:
    with socket.create_connection(api, timeout=READ_TIMEOUT_S + 5) as sock:
        assert sock.recv(65536) == b""  # closed, nothing written


def test_a_request_sent_in_pieces_is_answered_as_a_whole(api: Address, admin_token: str) -> None:
    body = json.dumps(NODE).encode()
    raw = (
        b"POST /v1/nodes HTTP/1.1\r\nHost: powerq\r\nConnection: close\r\n"
        b"Authorization: Bearer " + admin_token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    pieces = [raw[:7], raw[7:40], raw[40:-20], raw[-20:-3], raw[-3:]]

    with socket.create_connection(api, timeout=5) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.2)
        answer = sock.makefile("rb").read()

    assert answer.startswith(b"HTTP/1.1 201 "), answer


def test_a_chunked_body_is_answered(api: Address, admin_token: str) -> None:
    body = json.dumps(NODE).encode()
    raw = (
        b"POST /v1/nodes HTTP/1.1\r\nHost: powerq\r\nConnection: close\r\n"
        b"Authorization: Bearer " + admin_token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:])
    )

    with socket.create_connection(api, timeout=5) as sock:
        sock.sendall(raw[:-4])
        time.sleep(0.3)  # the last chunk is not there yet: no thread is waiting on it
        sock.sendall(raw[-4:])
        answer = sock.makefile("rb").read()

    assert answer.startswith(b"HTTP/1.1 201 "), answer


def test_kept_alive_and_pipelined_requests_are_all_answered(api: Address) -> None:
    connection = http.client.HTTPConnection(*api, timeout=5)
    try:
        for _ in range(3):  # one connection, three requests in turn
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
    finally:
        connection.close()

    two = b"GET /healthz HTTP/1.1\r\nHost: powerq\r\n\r\n" * 2
    with socket.create_connection(api, timeout=5) as sock:
        sock.sendall(two)  # both at once: the second waits in the first one's buffer
        reader = sock.makefile("rb")
        statuses = []
        for _ in range(2):
            statuses.append(reader.readline())
            length = 0
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
    assert [s.split()[1] for s in statuses] == [b"200", b"200"]


def test_a_half_sent_pipelined_request_holds_no_thread(api: Address) -> None:
    whole_then_half = (
        b"GET /healthz HTTP/1.1\r\nHost: powerq\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n"
    )
    held = [socket.create_connection(api, timeout=5) for _ in range(SLOW_CONNECTIONS)]
    try:
        for sock in held:
            sock.sendall(whole_then_half)  # more than the 16 threads, were each to wait
        for sock in held:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")  # the first is answered

        health = timed_request(api, "GET", "/healthz")
    finally:
        for sock in held:
            sock.close()
    assert health[0] == 200


def test_a_body_over_the_limit_is_refused_with_413_without_being_read(api: Address) -> None:
    head = (
        b"POST /v1/nodes HTTP/1.1\r\nHost: powerq\r\nContent-Type: application/json\r\n"
        b"Content-Length: 999999999\r\n\r\n"
    )
    with socket.create_connection(api, timeout=5) as sock:
        sock.sendall(head)  # and never a byte of the body
        answer = sock.makefile("rb").read()

    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 413 "), answer
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["status"] == 413


def test_a_client_waiting_for_100_continue_is_told_to_go_on(api: Address, admin_token: str) -> None:
    body = json.dumps(NODE).encode()
    head = (
        b"POST /v1/nodes HTTP/1.1\r\nHost: powerq\r\nConnection: close\r\n"
        b"Authorization: Bearer " + admin_token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(api, timeout=READ_TIMEOUT_S - 1) as sock:
        sock.sendall(head)
        interim = sock.recv(65536)  # before the read timeout: the body waits for it
        sock.sendall(body)
        answer = sock.makefile("rb").read()

    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
    assert b"HTTP/1.1 201 " in interim + answer, answer
