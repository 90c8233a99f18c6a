"""``powerq power`` and ``powerq boot`` submit each node's request with an
``Idempotency-Key`` of its own and send it again with that key when its answer
was lost (as ``powerq batch`` does), so a slow API never runs an action twice;
a node that still cannot be submitted stops the command after the rows of the
nodes already queued are printed (exit 3)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from powerq.cli import main
from powerq.db import session_scope
from powerq.models import IdempotentResponse, Node, PowerRequest
from tests.cli.conftest import Cli, error_line
from tests.cli.test_batch_submit import _Proxy, _SlowFirstSubmit, serving
from tests.stack import Stack

# --- the CLI against a stub API: what each submit carries --------------------------


class _StubApi(BaseHTTPRequestHandler):
    """Knows every node; accepts each power/boot submit (recording its method, node
    and Idempotency-Key), except that the node's ``script`` may say how to answer
    its next tries: ``"503"``, or ``"silent"`` (only after the client gave up)."""

    protocol_version = "HTTP/1.1"
    server: _Stub

    def do_GET(self) -> None:
        self._answer(200, {"name": self.path.rsplit("/", 1)[-1]})

    def do_POST(self) -> None:
        self._submit()

    def do_PUT(self) -> None:
        self._submit()

    def _submit(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        node = self.path.split("/")[3]
        self.server.submits.append((self.command, node, self.headers.get("Idempotency-Key")))
        script = self.server.script.get(node) or ["accept"]
        how = script.pop(0) if len(script) > 1 else script[0]  # the last one stays
        if how == "503":
            return self._answer(503, {"detail": "the database is unavailable", "status": 503})
        if how == "silent":
            time.sleep(1.0)  # longer than the client waits
        request = {"id": f"req-{node}", "status": "pending", "error": None}
        self._answer(202, {"created": True, "dispatched": True, "request": request})

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client gave up on this answer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class _Stub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StubApi)
        self.submits: list[tuple[str, str, str | None]] = []
        self.script: dict[str, list[str]] = {}


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Stub]:
    monkeypatch.setattr("powerq.client.SUBMIT_BACKOFF_S", 0.0)  # retries without pauses
    server = _Stub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _run(stub: _Stub, *args: str, timeout: str = "5") -> Result:
    environment = {
        "POWERQ_API_URL": f"http://127.0.0.1:{stub.server_address[1]}",
        "POWERQ_TOKEN": "pq_test",
        "POWERQ_API_TIMEOUT_S": timeout,
    }
    result = CliRunner().invoke(main, list(args), env=environment, catch_exceptions=False)
    assert "Traceback" not in result.output, result.output
    return result


def test_each_power_and_boot_submit_carries_its_own_key(stub: _Stub) -> None:
    first = _run(stub, "power", "n1", "n2", "off")
    again = _run(stub, "power", "n1", "n2", "off")
    boot = _run(stub, "boot", "n1", "pxe")

    assert first.exit_code == again.exit_code == boot.exit_code == 0, first.output
    assert [(method, node) for method, node, _ in stub.submits] == [
        ("POST", "n1"), ("POST", "n2"), ("POST", "n1"), ("POST", "n2"), ("PUT", "n1"),
    ]  # fmt: skip
    keys = [key for _, _, key in stub.submits]
    assert all(key is not None and key.startswith("powerq-cli-") for key in keys)
    assert len(set(keys)) == 5  # one per node per invocation: a re-run is a new request
    k1, k2 = str(keys[0]), str(keys[1])
    assert k1.endswith("-n1") and k2.endswith("-n2")
    assert k1.removesuffix("-n1") == k2.removesuffix("-n2")  # one invocation, one prefix


def test_a_503_is_retried_with_the_same_key_then_the_queued_rows_are_printed(
    stub: _Stub,
) -> None:
    stub.script["n3"] = ["503"]

    result = _run(stub, "power", "n1", "n2", "n3", "n4", "cycle")

    line = error_line(result, code=3)
    assert line == (
        "Error: the database is unavailable (HTTP 503) (4 tries): stopped at 'n3', which was "
        "not queued, 1 node(s) after it were not asked; the rows printed above were handled"
    )
    assert [row.split("\t")[:4] for row in result.stdout.splitlines()] == [
        ["n1", "created", "pending", "req-n1"],
        ["n2", "created", "pending", "req-n2"],
    ]
    tries = [key for _, node, key in stub.submits if node == "n3"]
    assert len(tries) == 4 and len(set(tries)) == 1
    assert "n4" not in {node for _, node, _ in stub.submits}


def test_a_submit_that_timed_out_says_it_may_have_been_queued(stub: _Stub) -> None:
    stub.script["n2"] = ["silent"]

    result = _run(stub, "boot", "n1", "n2", "disk", "--json", timeout="0.3")

    line = error_line(result, code=3)
    assert line.startswith("Error: the powerq API at http://127.0.0.1:")
    assert line.endswith(
        "did not answer within 0.3 s (4 tries): stopped at 'n2', which may have been "
        "queued; the rows printed above were handled"
    )
    assert [row["node"] for row in json.loads(result.stdout)] == ["n1"]
    tries = [key for method, node, key in stub.submits if node == "n2"]
    assert len(tries) == 4 and len(set(tries)) == 1


def test_a_lone_node_whose_try_timed_out_before_a_503_may_have_been_queued(stub: _Stub) -> None:
    stub.script["n1"] = ["silent", "503"]

    result = _run(stub, "power", "n1", "off", timeout="0.3")

    assert error_line(result, code=3) == (
        "Error: the database is unavailable (HTTP 503) (4 tries): stopped at 'n1', which may "
        "have been queued"
    )
    assert result.stdout == ""
    tries = [key for _, _, key in stub.submits]
    assert len(tries) == 4 and len(set(tries)) == 1


def test_a_retry_that_succeeds_is_one_row_and_exit_0(stub: _Stub) -> None:
    stub.script["n1"] = ["503", "silent", "accept"]

    result = _run(stub, "power", "n1", "n2", "on", timeout="0.3")

    assert result.exit_code == 0, result.output
    assert [row.split("\t")[0] for row in result.stdout.splitlines()] == ["n1", "n2"]
    keys = [key for _, node, key in stub.submits if node == "n1"]
    assert len(keys) == 3 and len(set(keys)) == 1


def test_a_refused_connection_is_not_retried(stub: _Stub) -> None:
    port = stub.server_address[1]
    stub.shutdown()
    stub.server_close()

    result = CliRunner().invoke(
        main, ["power", "n1", "on"], catch_exceptions=False,
        env={"POWERQ_API_URL": f"http://127.0.0.1:{port}", "POWERQ_TOKEN": "pq_test"},
    )  # fmt: skip

    assert error_line(result, code=3) == (
        f"Error: cannot reach the powerq API at http://127.0.0.1:{port}: "
        "connection refused — is `powerq up` running?"
    )


# --- the CLI against the live stack: a lost answer, retried, cycles once -------------


class _SlowFirstPower(_SlowFirstSubmit):
    """:class:`_SlowFirstSubmit` for power submits: swallows the answer to the first
    POST /v1/nodes/{name}/power (the request is recorded and runs), and notes which
    answers were replays."""

    server: _PowerProxy

    def do_POST(self) -> None:
        if not self.path.endswith("/power"):
            return self._forward()
        self.server.keys.append(self.headers.get("Idempotency-Key"))
        if len(self.server.keys) == 1:
            self._forward(hold=True)
        else:
            self.server.retried.set()
            self._forward()

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "idempotent-replayed":
            self.server.replayed.append(self.path)
        super().send_header(keyword, value)


class _PowerProxy(_Proxy):
    def __init__(self, api_url: str) -> None:
        super().__init__(api_url)
        self.RequestHandlerClass = _SlowFirstPower
        self.replayed: list[str] = []


@pytest.fixture
def power_proxy(api_url: str) -> Iterator[_PowerProxy]:
    yield from serving(_PowerProxy(api_url))


@pytest.mark.ipmi
@pytest.mark.slow
def test_a_timed_out_cycle_is_retried_with_its_key_and_cycles_once(
    live: Stack, cli: Cli, power_proxy: _PowerProxy
) -> None:
    a, b = live.register_fleet(2)
    url = f"http://127.0.0.1:{power_proxy.server_address[1]}"

    result = cli(
        "power", a, b, "cycle", "--wait", "--json", role="operator",
        POWERQ_API_URL=url, POWERQ_API_TIMEOUT_S="1",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    keys = power_proxy.keys
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2]  # a, a again, b
    assert str(keys[0]).startswith("powerq-cli-") and str(keys[0]).endswith(f"-{a}")
    assert power_proxy.replayed == [f"/v1/nodes/{a}/power"]  # the retry got the first answer
    rows = {row["node"]: row for row in json.loads(result.stdout)}
    assert rows[a]["outcome"] == "created" and rows[a]["request"]["status"] == "succeeded"
    with session_scope() as session:
        of_a = session.scalars(
            select(PowerRequest.id)
            .join(Node, Node.id == PowerRequest.node_id)
            .where(Node.name == a)
        ).all()
        stored = session.scalars(select(IdempotentResponse.key)).all()
    assert [str(request_id) for request_id in of_a] == [rows[a]["request"]["id"]]  # one request
    assert sorted(stored) == sorted([keys[0], keys[2]])
    assert [e["action"] for e in live.power_commands(a)] == ["power_down", "power_up"]  # once
