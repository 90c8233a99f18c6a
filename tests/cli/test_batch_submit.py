"""``powerq batch`` without workers: maintenance left out and reported, the batch's
name shown, and a submit that timed out retried with its Idempotency-Key so that
a slow server makes neither a false failure nor a second batch."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from powerq.models import Batch, Node
from tests.cli.conftest import Cli, error_line
from tests.factories import make_node


@pytest.fixture
def fleet(session: Session, quiet_lanes: None) -> list[str]:
    """b1, b2, b3 tagged rack1; b2 in maintenance."""
    names = ["b1", "b2", "b3"]
    for i, name in enumerate(names):
        make_node(session, name, address=f"10.6.0.{i + 1}", tags=("rack1",))
    node = session.scalars(select(Node).where(Node.name == "b2")).one()
    node.maintenance, node.maintenance_reason = True, "fan"
    session.commit()
    return names


def _batches(session: Session) -> int:
    session.expire_all()
    return int(session.scalar(select(func.count()).select_from(Batch)) or 0)


def test_a_selector_batch_skips_maintenance_and_says_so(cli: Cli, fleet: list[str]) -> None:
    result = cli("batch", "off", "--tag", "rack1", "--name", "nightly", role="operator")
    as_json = cli("batch", "on", "--all", "--include-maintenance", "--json", role="operator")

    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # every node accepted: no row to list
    (line,) = result.stderr.splitlines()
    assert line.startswith("batch ") and " 'nightly' (off, 2 nodes): 2 " in line
    assert line.endswith("; 1 skipped (maintenance): b2") or "1 skipped (maintenance): b2;" in line
    body = json.loads(as_json.stdout)
    assert body["skipped"] == [] and body["total"] == 3  # b1, b3 refused: off is outstanding


def test_verbose_lists_every_node_and_the_skipped_ones(cli: Cli, fleet: list[str]) -> None:
    result = cli("batch", "off", "--all", "-v", "-o", "table", role="operator")

    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert "1 skipped (maintenance): b2" in result.stdout.splitlines()[0]
    assert {"b1", "b2", "b3"} <= set(rows)
    assert "skipped" in rows["b2"] and "maintenance" in rows["b2"]


def test_named_nodes_in_maintenance_run(cli: Cli, fleet: list[str]) -> None:
    result = cli("batch", "off", "b2", "--json", role="operator")

    body = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert [n["node"] for n in body["nodes"]] == ["b2"] and body["skipped"] == []


def test_only_maintenance_nodes_queue_nothing_and_exit_2(
    cli: Cli, fleet: list[str], session: Session
) -> None:
    result = cli("batch", "on", "--glob", "b2", role="operator")

    line = error_line(result, code=2)
    assert "every node the selector name 'b2' matches is in maintenance" in line
    assert line.endswith("; nothing was queued")
    assert _batches(session) == 0


def test_batches_list_shows_the_name(cli: Cli, fleet: list[str]) -> None:
    cli("batch", "query", "b1", "--name", "audit-7", role="operator")

    listed = cli("batches", "list", "-o", "table", role="reader")

    assert "NAME" in listed.stdout and "audit-7" in listed.stdout


class _SlowFirstSubmit(BaseHTTPRequestHandler):
    """Forwards to the API; holds the answer to the first POST /v1/batches (the batch is
    made) until the client has given up on it and sent it again."""

    protocol_version = "HTTP/1.1"
    server: _Proxy

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        if self.path != "/v1/batches":
            return self._forward()
        self.server.keys.append(self.headers.get("Idempotency-Key"))
        if len(self.server.keys) == 1:
            self._forward(hold=True)
        else:
            self.server.retried.set()
            self._forward()

    def _forward(self, hold: bool = False) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = urlsplit(self.server.api_url)
        upstream = http.client.HTTPConnection(target.hostname or "", target.port)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        if hold:
            self.server.retried.wait()  # the client timed out and retried meanwhile
            self.close_connection = True
            return  # the first answer is never delivered
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection"):
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api_url: str) -> None:
        super().__init__(("127.0.0.1", 0), _SlowFirstSubmit)
        self.api_url = api_url
        self.keys: list[str | None] = []
        self.retried = threading.Event()


@pytest.fixture
def proxy(api_url: str) -> Iterator[_Proxy]:
    yield from serving(_Proxy(api_url))


_P = TypeVar("_P", bound=_Proxy)


def serving(server: _P) -> Iterator[_P]:
    """Serve ``server`` in a thread; yield it, and stop it after (a fixture's body)."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.retried.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_a_timed_out_submit_is_retried_with_its_key_and_makes_one_batch(
    cli: Cli, fleet: list[str], session: Session, proxy: _Proxy
) -> None:
    url = f"http://127.0.0.1:{proxy.server_address[1]}"

    result = cli(
        "batch", "off", "b1", "b3", "--json", role="operator",
        POWERQ_API_URL=url, POWERQ_API_TIMEOUT_S="1",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert len(proxy.keys) == 2 and proxy.keys[0] == proxy.keys[1]
    assert proxy.keys[0] is not None and proxy.keys[0].startswith("powerq-cli-")
    body = json.loads(result.stdout)
    assert [n["node"] for n in body["nodes"]] == ["b1", "b3"]
    assert _batches(session) == 1
    assert str(session.scalars(select(Batch.id)).one()) == body["id"]
