"""gunicorn's gthread worker, except that the answers gunicorn writes itself are
RFC 9457 ``application/problem+json`` like every other answer of the API.

gunicorn refuses some requests before the application sees them: a request
line over ``limit_request_line`` (414), headers over ``limit_request_fields`` or
``limit_request_field_size`` (431), a malformed request line or header (400),
and writes a ``text/html`` page for each. Every such page, and the 500 it
writes when the application itself fails, goes through one function,
``gunicorn.util.write_error(sock, status, reason, message)`` (called by
``Worker.handle_error``): this worker replaces that function in its own
process with :func:`write_problem`. Everything else is gthread's
``ThreadWorker``, unchanged. ``tests/api/test_gunicorn_problems.py`` runs a
real gunicorn with :mod:`powerq.gunicorn_conf`, so a gunicorn that stops
calling ``write_error`` fails it.

This module stays light (gunicorn's master imports it to find the class).
"""

from __future__ import annotations

import json
import socket

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

PROBLEM_MIME = "application/problem+json"


def problem_body(status: int, reason: str, message: str) -> bytes:
    """The problem document for an answer gunicorn makes itself, as UTF-8 JSON."""
    from powerq.api.problems import problem

    detail = message or f"the server could not answer the request ({reason})"
    return json.dumps(problem(status, reason, detail)).encode()


def write_problem(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Write gunicorn's own error answer as problem+json (the signature of
    ``gunicorn.util.write_error``) and let the connection close.

    :raises OSError: the client is gone (gunicorn catches and logs it).
    """
    body = problem_body(status_int, reason, mesg)
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        f"Content-Type: {PROBLEM_MIME}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class ProblemThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread (``--threads``), answering gunicorn's own errors as problem+json."""

    def init_process(self) -> None:
        """Install :func:`write_problem` in this worker process, then run as gthread."""
        util.write_error = write_problem
        super().init_process()
