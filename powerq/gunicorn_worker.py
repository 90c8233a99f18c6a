"""gunicorn's gthread worker, except that a request is read whole before a
thread takes it, and the answers gunicorn writes itself are RFC 9457
``application/problem+json`` like every other answer of the API.

**Slow clients.** gthread hands a new connection to a request thread, which
waits up to 5 s for a first byte and then reads the request with blocking
calls for as long as the client takes: a few dozen connections that send a
header line every few seconds (slowloris) hold every thread, and the API stops
answering. This worker collects each request in its event loop instead,
without blocking (:class:`powerq.request_arrival.RequestArrival` says when it
is whole), and only then hands it to a thread, whose parser reads it from
memory. A slow client costs a socket, not a thread; one that has not sent its
whole request ``POWERQ_API_READ_TIMEOUT_S`` after connecting (on a kept-alive
connection: after starting its next request) gets a 408 and is closed. A body
over ``POWERQ_MAX_BODY_BYTES`` is refused with 413 from the event loop, without
being read; a client that waits for ``100 Continue`` is told to go on from the
event loop too; bytes of a pipelined next request go back to the event loop
after the first answer, never to a thread that would wait on their rest.
gunicorn's ``worker_connections`` (1,000) bounds the sockets per process. With
TLS served by gunicorn itself (``--certfile``) the bytes stay encrypted until a
thread does the handshake, so gthread's own behaviour applies there: terminate
TLS at the reverse proxy (README, Security) to keep this protection.

**Errors.** gunicorn refuses some requests before the application sees them: a
request line over ``limit_request_line`` (414), headers over
``limit_request_fields`` or ``limit_request_field_size`` (431), a malformed
request line or header (400), and writes a ``text/html`` page for each. Every
such page, and the 500 it writes when the application itself fails, goes
through one function, ``gunicorn.util.write_error(sock, status, reason,
message)`` (called by ``Worker.handle_error``): this worker replaces that
function in its own process with :func:`write_problem`.

``tests/api/test_gunicorn_problems.py`` and ``tests/api/test_slow_clients.py``
run a real gunicorn with :mod:`powerq.gunicorn_conf`, so a gunicorn release that
changes the internals this relies on (``accept``, ``on_client_socket_readable``,
``handle``, ``murder_pending``, ``util.write_error``) fails them.

This module stays light (gunicorn's master imports it to find the class).
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import socket
import time
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from powerq.request_arrival import RequestArrival

PROBLEM_MIME = "application/problem+json"
RECV_BYTES = 65536
_ACCEPT_RACES = (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK)
# Attributes of a TConn: its collected request (to the thread), bytes read past
# it (back to the event loop), and whether it was told to go on (100 Continue).
_ARRIVED = "powerq_arrived"
_LEFTOVER = "powerq_leftover"
_CONTINUED = "powerq_continued"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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
    """gthread (``--threads``) that reads requests whole in its event loop, and
    answers gunicorn's own errors as problem+json."""

    def init_process(self) -> None:
        """Install :func:`write_problem` in this worker process, then run as gthread."""
        from powerq.config import get_settings

        util.write_error = write_problem
        settings = get_settings()
        self.arriving: dict[TConn, RequestArrival] = {}
        self.read_timeout_s = settings.api_read_timeout_s
        # Longer bodies are not waited for: the application refuses them.
        self.max_body_bytes = settings.max_body_bytes
        super().init_process()

    # --- collecting requests in the event loop ---------------------------------
    def accept(self, listener: socket.socket) -> None:
        """Accept a connection and start collecting its first request."""
        if self.cfg.is_ssl:
            super().accept(listener)
            return
        try:
            client, address = listener.accept()
        except OSError as error:
            if error.errno not in _ACCEPT_RACES:
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client, address, listener.getsockname())  # non-blocking
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_request_bytes, conn))
        self._collect(conn)

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        """A kept-alive connection has its next request coming: collect it."""
        if self.cfg.is_ssl:
            super().on_client_socket_readable(conn, client)
            return
        self.keepalived_conns.remove(conn)
        self.poller.modify(client, selectors.EVENT_READ, partial(self.on_request_bytes, conn))
        self._collect(conn)
        self.on_request_bytes(conn, client)

    def _collect(self, conn: TConn) -> None:
        head_limit = self.cfg.limit_request_line + (
            self.cfg.limit_request_fields * (self.cfg.limit_request_field_size + 2)
        )
        self.arriving[conn] = RequestArrival(head_limit, self.max_body_bytes)
        conn.timeout = time.monotonic() + self.read_timeout_s

    def on_request_bytes(self, conn: TConn, client: socket.socket) -> None:
        """Read what the client sent; hand the request to a thread once it is whole."""
        try:
            chunk = client.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client went away before finishing its request
            self._close_arriving(conn)
            return
        self._take(conn, chunk)

    def _take(self, conn: TConn, chunk: bytes) -> None:
        """Add ``chunk`` to ``conn``'s request: hand it to a thread once whole,
        refuse a body over the limit without reading it, and say ``100 Continue``
        to a client that waits for it before sending its body."""
        arrival = self.arriving[conn]
        if not arrival.feed(chunk):
            if arrival.expects_continue and not getattr(conn, _CONTINUED, False):
                setattr(conn, _CONTINUED, True)
                with contextlib.suppress(OSError):
                    conn.sock.send(CONTINUE)
            return
        if arrival.too_large:
            with contextlib.suppress(OSError):
                write_problem(
                    conn.sock,
                    413,
                    "Content Too Large",
                    f"the request body is larger than {self.max_body_bytes} bytes",
                )
            self._close_arriving(conn)
            return
        self.poller.unregister(conn.sock)
        del self.arriving[conn]
        conn.__dict__.pop(_CONTINUED, None)
        setattr(conn, _ARRIVED, bytes(arrival.data))
        conn.data_ready = True
        self.enqueue_req(conn)

    def finish_request(self, conn: TConn, fs: Any) -> None:
        """As gthread; but a kept-alive connection whose parser already holds
        bytes of the next request (pipelining) goes on collecting it in the event
        loop, not in a thread that would block on the rest."""
        leftover = conn.__dict__.pop(_LEFTOVER, b"")
        super().finish_request(conn, fs)
        if leftover and conn in self.keepalived_conns:
            self.keepalived_conns.remove(conn)
            self.poller.modify(
                conn.sock, selectors.EVENT_READ, partial(self.on_request_bytes, conn)
            )
            self._collect(conn)
            self._take(conn, leftover)

    def handle(self, conn: TConn) -> Any:
        """In a request thread: parse the collected request from memory, then as gthread."""
        arrived = conn.__dict__.pop(_ARRIVED, b"")
        if arrived:
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(arrived)
        keepalive = super().handle(conn)
        if arrived and keepalive:
            # Bytes read past this request belong to the next one: keep them for
            # the event loop (finish_request), so no thread waits on its rest.
            leftover = conn.parser.unreader.take_buffered()
            if leftover:
                setattr(conn, _LEFTOVER, leftover)
        return keepalive

    # --- giving up on slow clients ---------------------------------------------
    def murder_pending(self) -> None:
        """gthread's own expiry, then a 408 for every request not whole in time
        (at once for a stopping worker, after a short linger)."""
        super().murder_pending()
        now = time.monotonic()
        for conn, arrival in list(self.arriving.items()):
            if not self.alive:
                conn.timeout = min(conn.timeout, now + STOP_KEEPALIVE_LINGER)
            if conn.timeout <= now:
                if arrival.data:
                    with contextlib.suppress(OSError):
                        write_problem(
                            conn.sock,
                            408,
                            "Request Timeout",
                            f"the request did not arrive whole within {self.read_timeout_s:g} s",
                        )
                self._close_arriving(conn)

    def _close_arriving(self, conn: TConn) -> None:
        self.arriving.pop(conn, None)
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()
