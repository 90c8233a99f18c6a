"""The CLI's HTTP client without the server: its settings, its connection, its tables."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from powerq.clicmds.output import key_values, plain, styled, table
from powerq.client import DEFAULT_API_URL, ApiError, ApiUnreachable, Client, setting
from powerq.errors import ConfigError
from powerq.services import free_tcp_port


class _Handler(BaseHTTPRequestHandler):
    """Answers every GET with its path as JSON; ``/close`` also closes the connection."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        if self.path.startswith("/missing"):
            return self._answer(404, {"detail": "no node named 'x'", "status": 404})
        self._answer(200, {"path": self.path, "auth": self.headers.get("Authorization")},
                     close=self.path.startswith("/close"))  # fmt: skip

    def _answer(self, status: int, body: object, close: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0


@pytest.fixture
def server() -> Iterator[_Server]:
    """A stub HTTP/1.1 server on loopback that counts the connections it accepted."""
    stub = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    yield stub
    stub.shutdown()
    stub.server_close()
    thread.join(timeout=5)


def _url(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_calls_share_one_connection_and_reopen_it_when_the_server_closed_it(
    server: _Server,
) -> None:
    api = Client(_url(server), "pq_t")

    first = api.call("GET", "/a", params={"tag": ["x", "y"], "limit": 2, "skip": None})
    second = api.call("GET", "/b")
    closing = api.call("GET", "/close")
    after = api.call("GET", "/c")

    assert first == {"path": "/a?tag=x&tag=y&limit=2", "auth": "Bearer pq_t"}
    assert (second["path"], closing["path"], after["path"]) == ("/b", "/close", "/c")
    assert server.connections == 2


def test_loopback_never_goes_through_a_proxy(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "")

    assert Client(_url(server), "t").call("GET", "/a")["path"] == "/a"


def test_errors_are_one_line(server: _Server) -> None:
    with pytest.raises(ApiError) as refused:
        Client(_url(server), "t").call("GET", "/missing")
    closed = f"http://127.0.0.1:{free_tcp_port()}"
    with pytest.raises(ApiUnreachable) as unreachable:
        Client(closed, "t").call("GET", "/a")
    with pytest.raises(ConfigError, match="POWERQ_API_URL must start with http:// or https://"):
        Client("127.0.0.1:8000", "t")

    assert str(refused.value) == "no node named 'x' (HTTP 404)"
    assert str(unreachable.value) == (
        f"cannot reach the powerq API at {closed}: connection refused — is `powerq up` running?"
    )


def test_the_environment_is_read_like_the_server_settings(tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("pq_from_file\n")

    default = Client.from_environment({"POWERQ_DATA_DIR": str(tmp_path / "none")})
    from_file = Client.from_environment({"POWERQ_DATA_DIR": str(tmp_path), "POWERQ_TOKEN": ""})
    explicit = Client.from_environment(
        {"powerq_api_url": "https://api.example:8443/", "POWERQ_TOKEN": "pq_set",
         "POWERQ_DATA_DIR": str(tmp_path)}
    )  # fmt: skip

    assert (default.base_url, default.token) == (DEFAULT_API_URL, None)
    assert from_file.token == "pq_from_file"
    assert (explicit.base_url, explicit.token) == ("https://api.example:8443", "pq_set")
    assert setting("POWERQ_TOKEN", {"Powerq_Token": "a"}) == "a"


def test_plain_tables_are_aligned_one_row_per_line_without_markup() -> None:
    rows = [("n1", styled("succeeded"), None), ("node-2", styled("failed"), "BMC said\nno")]

    text = plain(table("2 nodes", ("NODE", "STATUS", "REASON"), rows))
    fields = plain(key_values("node n1", [("name", "n1"), ("power_state", "on")]))

    assert text == (
        "2 nodes\nNODE    STATUS     REASON\nn1      succeeded\nnode-2  failed     BMC said no\n"
    )
    assert fields == "node n1\nname         n1\npower_state  on\n"
