"""When a request counts as arrived whole (pure logic of powerq/request_arrival.py;
tests/api/test_slow_clients.py drives it through a real gunicorn)."""

from __future__ import annotations

import pytest

from powerq.request_arrival import RequestArrival

HEAD_LIMIT = 200
BODY_LIMIT = 100


def arrival() -> RequestArrival:
    return RequestArrival(HEAD_LIMIT, BODY_LIMIT)


def fed_bytewise(raw: bytes) -> list[bool]:
    """Whether the request counted as complete after each byte."""
    collecting = arrival()
    return [collecting.feed(raw[i : i + 1]) for i in range(len(raw))]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/nodes HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /v1/nodes HTTP/1.1\r\ncontent-length:   0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\nY-Trailer: 2\r\n\r\n",
    ],
    ids=["get", "content-length", "empty-body", "chunked", "chunked-with-trailers"],
)
def test_complete_exactly_at_the_last_byte(raw: bytes) -> None:
    assert fed_bytewise(raw) == [False] * (len(raw) - 1) + [True]


def test_bytes_past_the_request_are_kept_for_the_next_one() -> None:
    collecting = arrival()
    two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"

    assert collecting.feed(two)
    assert bytes(collecting.data) == two


def test_a_chunk_that_looks_like_the_end_inside_data_is_not_the_end() -> None:
    raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n0\r\n\r\nxx\r\n"

    assert not arrival().feed(raw)
    assert arrival().feed(raw + b"0\r\n\r\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /" + b"a" * HEAD_LIMIT + b" HTTP/1.1",  # no end of head in sight
        b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n",  # body over the limit
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n80\r\n",  # chunk over the limit
    ],
    ids=["long-head", "long-body", "negative-length", "bad-length", "bad-chunk", "long-chunk"],
)
def test_what_the_parser_refuses_is_handed_over_without_waiting(raw: bytes) -> None:
    assert arrival().feed(raw)


def test_a_partial_head_is_not_complete() -> None:
    collecting = arrival()

    assert not collecting.feed(b"POST /v1/nodes HTTP/1.1\r\nHost: x\r\n")
    assert not collecting.feed(b"X-Slow: 1\r\n")
    assert not collecting.complete
