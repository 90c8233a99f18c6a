"""Strict JSON request bodies: the one parser every JSON body of the API goes through.

Flask's ``request.get_json`` (what APIFlask's ``@input`` calls, with
``force=True``, and what views that parse their own body call) is replaced by
:class:`StrictJsonRequest`, so no endpoint can parse a body another way. A body
is accepted only when:

* its ``Content-Type`` is ``application/json`` or ``application/*+json``, with
  no charset or ``charset=utf-8`` (``force`` does not bypass this): else 415;
* it is UTF-8 without a byte-order mark (no UTF-16/32, no NUL bytes): else 400;
* it is one JSON document, with no duplicate object member (Python would keep
  the last one silently: ``{"action": "query", "action": "reset"}``), no
  ``NaN``/``Infinity``, no number longer than :data:`MAX_NUMBER_CHARS`
  characters or too large for a float, nesting at most :data:`MAX_DEPTH`
  levels, and not ``null``: else 400.

Each refusal is a :class:`~powerq.errors.PowerqError` (problem+json, naming the
problem in words) raised before the view does anything, so it changes nothing.
:func:`canonical` gives the form :mod:`powerq.api.idempotency` fingerprints.
"""

from __future__ import annotations

import json
import math
from typing import Any

from apiflask import APIFlask
from flask import Request
from werkzeug.http import parse_options_header

from powerq.errors import MalformedBody, UnsupportedMediaType

JSON_MIME = "application/json"
MAX_DEPTH = 32
MAX_NUMBER_CHARS = 64
ENCODING_DETAIL = "the body must be UTF-8 JSON without a byte-order mark"
_BOMS = (b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe")  # UTF-8, UTF-16 (UTF-32 LE starts FF FE)
_SHOWN_CHARS = 64
_UNSET: Any = object()


def check_content_type(header: str | None) -> None:
    """Accept ``application/json`` or ``application/*+json``, charset absent or UTF-8.

    :raises UnsupportedMediaType: no Content-Type, another type, or another charset.
    """
    mimetype, options = parse_options_header(header or "")
    mimetype = mimetype.lower()
    if not _is_json_mimetype(mimetype):
        given = repr(_shown(mimetype)) if mimetype else "none was given"
        raise UnsupportedMediaType(f"Content-Type must be {JSON_MIME} ({given})")
    charset = options.get("charset")
    if charset is not None and charset.lower() != "utf-8":
        raise UnsupportedMediaType(
            f"Content-Type must be {JSON_MIME} with charset utf-8 or none "
            f"(charset {_shown(charset)!r} was given)"
        )


def _is_json_mimetype(mimetype: str) -> bool:
    if mimetype == JSON_MIME:
        return True
    kind, _, subtype = mimetype.partition("/")
    return kind == "application" and subtype.endswith("+json") and len(subtype) > len("+json")


def decode_utf8(data: bytes) -> str:
    """The body as text.

    :raises MalformedBody: empty, a byte-order mark, a NUL byte (UTF-16/32), or not UTF-8.
    """
    if not data:
        raise MalformedBody("the request body is empty; send a JSON object")
    if data.startswith(_BOMS) or b"\x00" in data:
        raise MalformedBody(ENCODING_DETAIL)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody(ENCODING_DETAIL) from None


def parse(text: str) -> Any:
    """One strict JSON document: see the module docstring.

    :raises MalformedBody: not JSON, a duplicate key, NaN/Infinity, an absurd
        number, nested deeper than MAX_DEPTH, or ``null``.
    """
    try:
        document = json.loads(
            text,
            object_pairs_hook=_object,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except json.JSONDecodeError as exc:
        raise MalformedBody(f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise MalformedBody(_too_deep()) from None
    _check_depth(document)
    if document is None:
        raise MalformedBody("the JSON body is null; send an object")
    return document


def parse_body(content_type: str | None, data: bytes) -> Any:
    """Check the Content-Type, decode and parse a request body.

    :raises UnsupportedMediaType: the Content-Type is not JSON in UTF-8.
    :raises MalformedBody: the body is empty, not UTF-8 or not strict JSON.
    """
    if data:  # an empty body is "empty", whatever its (absent) type
        check_content_type(content_type)
    return parse(decode_utf8(data))


def canonical(document: Any) -> str:
    """``document`` as canonical JSON: sorted keys, no whitespace, ASCII only, and
    integral floats written as integers (``60.0`` is ``60``), so bodies that
    differ only in key order, spacing, escapes or number spelling are equal.
    """
    return json.dumps(
        _normalised(document),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )


def _normalised(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _normalised(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalised(item) for item in value]
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a JSON object, refusing a member given twice.

    :raises MalformedBody: a duplicate key.
    """
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise MalformedBody(f"duplicate key {_shown(key)!r} in the JSON body")
        document[key] = value
    return document


def _int(text: str) -> int:
    """parse_int: an integer of at most MAX_NUMBER_CHARS characters.

    :raises MalformedBody: a longer one.
    """
    if len(text) > MAX_NUMBER_CHARS:
        raise MalformedBody(_absurd_number())
    return int(text)


def _float(text: str) -> float:
    """parse_float: a finite float written in at most MAX_NUMBER_CHARS characters.

    :raises MalformedBody: a longer one, or one too large for a float (``1e999``).
    """
    if len(text) > MAX_NUMBER_CHARS:
        raise MalformedBody(_absurd_number())
    value = float(text)
    if not math.isfinite(value):
        raise MalformedBody("a number in the JSON body is too large")
    return value


def _constant(name: str) -> Any:
    """parse_constant: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON.

    :raises MalformedBody: always.
    """
    raise MalformedBody(f"{name} is not valid JSON; numbers in the body must be finite")


def _check_depth(document: Any) -> None:
    """:raises MalformedBody: objects/arrays nested more than MAX_DEPTH levels."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: list[Any] = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise MalformedBody(_too_deep())
        stack.extend((child, depth + 1) for child in children)


def _absurd_number() -> str:
    return f"a number in the JSON body is longer than {MAX_NUMBER_CHARS} characters"


def _too_deep() -> str:
    return f"the JSON body is nested more than {MAX_DEPTH} levels deep"


def _shown(text: str) -> str:
    """Client text quoted in a detail, cut short."""
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


class StrictJsonRequest(Request):
    """Flask's request whose JSON body is always parsed by :func:`parse_body`."""

    _strict_json: Any = _UNSET

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        """The parsed body. ``force`` is ignored: the Content-Type is always checked.

        :raises UnsupportedMediaType: the Content-Type is not JSON in UTF-8 (unless ``silent``).
        :raises MalformedBody: the body is not strict UTF-8 JSON (unless ``silent``).
        """
        if self._strict_json is not _UNSET:
            return self._strict_json
        try:
            document = parse_body(self.headers.get("Content-Type"), self.get_data(cache=True))
        except (MalformedBody, UnsupportedMediaType):
            if silent:
                return None
            raise
        if cache:
            self._strict_json = document
        return document

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        """Never reached through :meth:`get_json`; refuse like it would.

        :raises MalformedBody: always.
        """
        raise MalformedBody("malformed JSON body")


def init_app(app: APIFlask) -> None:
    """Make ``app`` parse every JSON request body strictly."""
    app.request_class = StrictJsonRequest
