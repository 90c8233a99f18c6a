"""The fleet's JSON control API over HTTP on 127.0.0.1 (stdlib server, own thread).

Routes are listed in :data:`ROUTES` and documented in README.md. Each request
is handed to the event-loop thread and answered with its JSON result; unknown
BMC or route -> 404, bad parameters -> 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from powerq.bmc.simfleet.control import ControlApi, ControlError

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_LOOP_TIMEOUT = 30.0
_MAX_BODY = 1 << 16

Op = Callable[[ControlApi, dict[str, str], dict[str, Any]], Any]
_NAME = r"(?P<name>[A-Za-z0-9_.-]+)"

ROUTES: list[tuple[str, re.Pattern[str], Op]] = [
    (method, re.compile(f"^{pattern}$"), op)
    for method, pattern, op in (
        ("GET", "/health", lambda api, p, b: api.health()),
        ("GET", "/manifest", lambda api, p, b: api.manifest()),
        ("GET", "/bmcs", lambda api, p, b: api.bmcs()),
        ("GET", f"/bmcs/{_NAME}", lambda api, p, b: api.bmc(p["name"])),
        ("GET", f"/bmcs/{_NAME}/log", lambda api, p, b: api.log(p["name"])),
        ("POST", f"/bmcs/{_NAME}/fault", lambda api, p, b: api.set_fault(p["name"], b)),
        ("DELETE", f"/bmcs/{_NAME}/fault", lambda api, p, b: api.clear_fault(p["name"], {})),
        (
            "DELETE",
            f"/bmcs/{_NAME}/fault/(?P<kind>[a-z0-9_]+)",
            lambda api, p, b: api.clear_fault(p["name"], {"kind": p["kind"]}),
        ),
        ("POST", f"/bmcs/{_NAME}/behaviour", lambda api, p, b: api.set_behaviour(p["name"], b)),
        ("POST", f"/bmcs/{_NAME}/power", lambda api, p, b: api.set_power(p["name"], b)),
        ("GET", "/overlaps", lambda api, p, b: api.overlaps()),
        ("POST", "/reset-logs", lambda api, p, b: api.reset_logs()),
    )
]


def resolve(method: str, path: str) -> tuple[Op, dict[str, str]] | None:
    """The operation and path parameters for a request, or None (404)."""
    for route_method, pattern, op in ROUTES:
        match = pattern.match(path)
        if match and route_method == method:
            return op, match.groupdict()
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], api: ControlApi, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(address, _Handler)
        self.api = api
        self.loop = loop


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("control API: " + format, *args)

    def _serve(self, method: str) -> None:
        found = resolve(method, self.path.split("?", 1)[0].rstrip("/") or "/")
        if found is None:
            self._reply(404, {"error": f"no route {method} {self.path}"})
            return
        op, params = found
        try:
            body = self._body()
            result = call_on_loop(self.server.loop, lambda: op(self.server.api, params, body))
        except KeyError as exc:
            self._reply(404, {"error": f"no BMC named {exc.args[0]!r}"})
        except (ControlError, ValueError) as exc:
            self._reply(400, {"error": str(exc)})
        else:
            self._reply(200, result)

    def _body(self) -> dict[str, Any]:
        length = min(int(self.headers.get("Content-Length") or 0), _MAX_BODY)
        if not length:
            return {}
        body = json.loads(self.rfile.read(length))
        if not isinstance(body, dict):
            raise ControlError("the request body must be a JSON object")
        return body

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def call_on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` on ``loop``'s thread and return its result.

    :raises TimeoutError: the loop did not run it within 30 s.
    :raises Exception: whatever ``fn`` raised.
    """

    async def run() -> _T:
        return fn()

    return asyncio.run_coroutine_threadsafe(run(), loop).result(_LOOP_TIMEOUT)


class ControlServer:
    """The HTTP control API in a daemon thread."""

    def __init__(
        self,
        api: ControlApi,
        loop: asyncio.AbstractEventLoop,
        port: int,
        address: str = "127.0.0.1",
    ) -> None:
        self._server = _Server((address, port), api, loop)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="simfleet-control", daemon=True
        )

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start answering requests."""
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and close the socket (waits at most 5 s for the thread)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
