"""Whether an HTTP/1.1 request has arrived whole, judged from its raw bytes.

The API's gunicorn worker (:mod:`powerq.gunicorn_worker`) collects a request in
its event loop and hands it to a request thread only once this says it has
arrived, so a client that sends slowly holds a socket, never a thread. Judging
needs the end of the head (a blank line), then the body's length: a
``Content-Length``, or for ``Transfer-Encoding: chunked`` the last chunk and
its trailers. Anything malformed, or over the limits, counts as arrived: the
thread's parser (gunicorn's) then refuses it with the proper 4xx at once,
without waiting for more.

Pure bytes in, a yes or no out; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CRLF = b"\r\n"
HEAD_END = b"\r\n\r\n"


class _Malformed(ValueError):
    """The bytes are not a request this module can judge: the parser will refuse them."""


@dataclass
class RequestArrival:
    """The bytes of one request so far, and whether they are the whole of it.

    ``max_head_bytes``: longest head waited for (request line and headers);
    ``max_body_bytes``: longest body waited for (the API's limit).
    """

    max_head_bytes: int
    max_body_bytes: int
    data: bytearray = field(default_factory=bytearray)
    complete: bool = False

    def feed(self, chunk: bytes) -> bool:
        """Add ``chunk`` (as received); return whether the request is now complete."""
        self.data += chunk
        if not self.complete:
            self.complete = self._judge()
        return self.complete

    def _judge(self) -> bool:
        head_end = self.data.find(HEAD_END)
        if head_end < 0:
            return len(self.data) > self.max_head_bytes
        body_start = head_end + len(HEAD_END)
        try:
            length, chunked = _body_framing(bytes(self.data[:head_end]))
            if chunked:
                return _chunked_end(self.data, body_start, self.max_body_bytes) is not None
        except _Malformed:
            return True
        return length > self.max_body_bytes or len(self.data) - body_start >= length


def _body_framing(head: bytes) -> tuple[int, bool]:
    """The body's length from the head's headers (0 without one), and whether it
    is chunked instead.

    :raises _Malformed: a Content-Length that is not one decimal number.
    """
    length, chunked = 0, False
    for line in head.split(CRLF)[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            if not value.strip().isdigit():
                raise _Malformed(line)
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return length, chunked


def _chunked_end(data: bytearray, start: int, max_body_bytes: int) -> int | None:
    """Where a chunked body starting at ``start`` ends, or None if it has not
    arrived yet.

    :raises _Malformed: a chunk size that is not hexadecimal, or a body over
        ``max_body_bytes`` (either way the parser answers at once).
    """
    position = start
    while True:
        line_end = data.find(CRLF, position)
        if line_end < 0:
            return None
        size_text = bytes(data[position:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _Malformed(size_text) from None
        if size == 0:
            trailers_end = data.find(CRLF, line_end + len(CRLF))
            while trailers_end >= 0 and trailers_end != line_end + len(CRLF):
                # Each trailer line ends in CRLF; an empty line ends them all.
                line_end = trailers_end
                trailers_end = data.find(CRLF, line_end + len(CRLF))
            return None if trailers_end < 0 else trailers_end + len(CRLF)
        position = line_end + len(CRLF) + size + len(CRLF)
        if position - start > max_body_bytes:
            raise _Malformed(b"chunked body over the limit")
