"""Just enough HTTP/1.1 for the Redfish personality: read one request, render one response.

Requests carry their body by ``Content-Length`` only (what ``requests``, sushy
and curl send for JSON); chunked bodies are refused with 501. Persistent
connections are the HTTP/1.1 default unless the client says
``Connection: close`` (sushy always does).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024


class HttpError(Exception):
    """A request that cannot be parsed; ``status`` is the answer to give before closing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """One parsed request: ``path`` without its query string, header names in lower case."""

    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        """Whether the connection stays open after the answer."""
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"

    def json(self) -> Any:
        """The body decoded as JSON (None when empty).

        :raises ValueError: the body is not JSON.
        """
        return json.loads(self.body) if self.body else None


@dataclass
class Response:
    """A status, a JSON document (or none) and extra headers."""

    status: int
    document: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def render(self, *, keep_alive: bool) -> bytes:
        """The bytes on the wire: status line, headers, JSON body."""
        body = b"" if self.document is None else json.dumps(self.document).encode()
        reason = HTTPStatus(self.status).phrase
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        headers = {
            "Content-Length": str(len(body)),
            "OData-Version": "4.0",
            "Connection": "keep-alive" if keep_alive else "close",
            **self.headers,
        }
        if body:
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request; None when the client closed the connection between requests.

    :raises HttpError: malformed, too large, or chunked.
    :raises ConnectionError: the connection broke in the middle of a request.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise ConnectionError("connection closed in the middle of a request head") from exc
    except asyncio.LimitOverrunError as exc:
        raise HttpError(431, "request head too large") from exc
    request = parse_head(head)
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        raise HttpError(501, "chunked request bodies are not supported")
    length = _content_length(request.headers)
    if not length:
        return request
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ConnectionError("connection closed in the middle of a request body") from exc
    return Request(request.method, request.path, request.version, request.headers, body)


def parse_head(head: bytes) -> Request:
    """Parse a request line and headers (``head`` ends with the blank line).

    :raises HttpError: not an HTTP/1.x request line, or a malformed header.
    """
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes any byte
        raise HttpError(400, "undecodable request head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"bad request line {lines[0][:80]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return Request(method.upper(), target.split("?", 1)[0], version, headers)


def _content_length(headers: dict[str, str]) -> int:
    raw = headers.get("content-length", "0") or "0"
    if not raw.isdigit():
        raise HttpError(400, f"bad Content-Length {raw[:20]!r}")
    length = int(raw)
    if length > MAX_BODY:
        raise HttpError(413, f"request body of {length} bytes is over {MAX_BODY}")
    return length
