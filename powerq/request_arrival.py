"""Whether an HTTP/1.1 request has arrived whole, judged from its raw bytes.

The API's gunicorn worker (:mod:`powerq.gunicorn_worker`) collects a request in
its event loop and hands it to a request thread only once this says it has
arrived, so a client that sends slowly holds a socket, never a thread. Judging
needs the end of the head (a blank line), then the body's length: a
``Content-Length``, or for ``Transfer-Encoding: chunked`` the last chunk and
its trailers. Anything malformed, or a head over its limit, counts as arrived:
the thread's parser (gunicorn's) then refuses it with the proper 4xx at once,
without waiting for more. A body over its limit is marked ``too_large`` (the
worker answers 413 itself, without reading it).

It runs in the event loop, once per ``recv``, so each call resumes where the
last one stopped: the work over a whole request is linear in its size, however
finely the client cuts it.

Pure bytes in, a yes or no out; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CRLF = b"\r\n"
HEAD_END = b"\r\n\r\n"
# A chunk-size line (size and extensions) longer than this is not waited for.
MAX_CHUNK_LINE = 1024


class _Malformed(ValueError):
    """The bytes are not a request this module can judge: the parser will refuse them."""


@dataclass
class RequestArrival:
    """The bytes of one request so far, and whether they are the whole of it.

    ``max_head_bytes``: longest head waited for (request line and headers);
    ``max_body_bytes``: longest body waited for (the API's limit).
    ``expects_continue``: the head asked for ``100 Continue`` before its body.
    """

    max_head_bytes: int
    max_body_bytes: int
    data: bytearray = field(default_factory=bytearray)
    complete: bool = False
    too_large: bool = False
    expects_continue: bool = False
    _head_end: int = -1  # where the body starts, once the head's end was seen
    _searched: int = 0  # how far the search for the head's end got
    _length: int = 0
    _chunked: bool = False
    _chunk_at: int = 0  # where the next chunk-size (or trailer) line starts
    _in_trailers: bool = False

    def feed(self, chunk: bytes) -> bool:
        """Add ``chunk`` (as received); return whether the request is now complete."""
        self.data += chunk
        if not self.complete:
            try:
                self.complete = self._judge()
            except _Malformed:
                self.complete = True
        return self.complete

    def _judge(self) -> bool:
        """:raises _Malformed: see :func:`_body_framing` and :meth:`_chunks_done`."""
        if self._head_end < 0 and not self._find_head():
            return len(self.data) > self.max_head_bytes
        if self._chunked:
            return self._chunks_done()
        return len(self.data) - self._head_end >= self._length

    def _find_head(self) -> bool:
        """Look for the head's end in what is new; once found, read the framing.

        :raises _Malformed: see :func:`_body_framing`.
        """
        found = self.data.find(HEAD_END, max(0, self._searched - len(HEAD_END) + 1))
        if found < 0:
            self._searched = len(self.data)
            return False
        self._head_end = self._chunk_at = found + len(HEAD_END)
        self._length, self._chunked, self.expects_continue = _body_framing(bytes(self.data[:found]))
        if self._length > self.max_body_bytes:
            self.too_large = True
            raise _Malformed("body over the limit")
        return True

    def _chunks_done(self) -> bool:
        """Walk the chunks that arrived since the last call; True at the end of the
        trailers.

        :raises _Malformed: a chunk size that is not hexadecimal, a size line or
            trailers too long, or a body over ``max_body_bytes`` (``too_large``).
        """
        data = self.data
        while True:
            line_end = data.find(CRLF, self._chunk_at)
            if line_end < 0:
                if len(data) - self._chunk_at > MAX_CHUNK_LINE + self.max_head_bytes:
                    raise _Malformed("chunk line or trailers too long")
                return False
            if self._in_trailers:
                if line_end == self._chunk_at:  # the empty line after the trailers
                    return True
                self._chunk_at = line_end + len(CRLF)
                continue
            size_text = bytes(data[self._chunk_at : line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _Malformed(size_text) from None
            if size == 0:
                self._in_trailers = True
                self._chunk_at = line_end + len(CRLF)
                continue
            next_at = line_end + len(CRLF) + size + len(CRLF)
            if next_at - self._head_end > self.max_body_bytes:
                self.too_large = True
                raise _Malformed("chunked body over the limit")
            if len(data) < next_at:
                return False  # this chunk's data is still coming
            self._chunk_at = next_at


def _body_framing(head: bytes) -> tuple[int, bool, bool]:
    """The body's length from the head's headers (0 without one), whether it is
    chunked instead, and whether the client waits for ``100 Continue``.

    :raises _Malformed: a Content-Length that is not one decimal number.
    """
    length, chunked, expects_continue = 0, False, False
    for line in head.split(CRLF)[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            if not value.strip().isdigit():
                raise _Malformed(line)
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"expect":
            expects_continue = value.strip().lower() == b"100-continue"
    return length, chunked, expects_continue
