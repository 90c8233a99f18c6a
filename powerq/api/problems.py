"""Every error the API returns, 4xx or 5xx, as RFC 9457 ``application/problem+json``.

Sources of errors and where they are turned into problems:

* :class:`~powerq.errors.PowerqError` raised by views and the core modules
  (``problem()`` gives the document; rows it carries are serialised);
* werkzeug's HTTP errors: unknown route (404), wrong method (405), body over
  ``POWERQ_MAX_BODY_BYTES`` (413);
* request bodies that are not strict UTF-8 JSON (400) or not JSON at all (415),
  refused by :mod:`powerq.api.jsonbody` as PowerqErrors;
* APIFlask's validation errors (422) and Flask-HTTPAuth's 401/403;
* database trouble: unreachable, refusing connections ("too many clients") or
  no pooled connection free within ``POWERQ_DB_POOL_TIMEOUT_S`` (503 with
  ``Retry-After``; see :func:`_unavailable` for why a retry is safe), a constraint a
  concurrent change hit (409); anything else is a logged 500 that reveals nothing.

gunicorn's own answers (an over-long request line, oversized headers) are
problem+json too: :mod:`powerq.gunicorn_worker`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from apiflask import APIFlask, HTTPError
from flask import Response, current_app, request
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from powerq.api.serializers import to_json
from powerq.errors import PowerqError

log = logging.getLogger(__name__)

PROBLEM_MIME = "application/problem+json"
PROBLEM_BASE = "https://powerq.dev/problems/"
# Seconds a client is told to wait before retrying a 503.
RETRY_AFTER_S = 5
_SLUGS = {
    400: "malformed-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "body-too-large",
    414: "request-line-too-long",
    415: "unsupported-media-type",
    417: "expectation-failed",
    422: "invalid-input",
    431: "headers-too-large",
    500: "internal",
    501: "not-implemented",
    503: "unavailable",
}
_TITLES = {
    400: "Malformed request",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid input",
}


def problem(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    """A problem document for ``status`` (``type`` derived from the status)."""
    return {
        "type": PROBLEM_BASE + _SLUGS.get(status, f"http-{status}"),
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A problem+json response whose status is ``body["status"]``."""
    return Response(
        json.dumps(to_json(body)),
        status=int(body["status"]),
        headers=headers,
        mimetype=PROBLEM_MIME,
    )


def powerq_error_response(error: PowerqError) -> Response:
    """The response for one of powerq's own errors (a 503 with ``Retry-After``)."""
    if error.status >= 500:
        log.error("%s: %s", type(error).__name__, error.detail)
    headers = _RETRY_AFTER if error.status == 503 else None
    return problem_response(error.problem(), headers)


def _http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    title = _TITLES.get(status, error.name)
    return problem_response(problem(status, title, _http_detail(error, status)), headers)


def _http_detail(error: HTTPException, status: int) -> str:
    if status == 404:
        return f"nothing at {request.path} (see {request.root_path}/v1/openapi.json)"
    if status == 405:
        allowed = ", ".join(sorted(getattr(error, "valid_methods", None) or []))
        return f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return f"the request body is larger than the {limit} bytes accepted"
    return str(error.description or error.name)


def _validation_errors(detail: Any) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    if not isinstance(detail, dict):
        return errors
    for location, fields in detail.items():
        for field, messages in (fields or {}).items():
            for message in messages if isinstance(messages, list) else [messages]:
                text = str(message).removeprefix("Value error, ")
                name = "" if field == "_schema" else field  # a rule about the whole body
                errors.append({"location": str(location), "field": name, "message": text})
    return errors


def _describe(errors: list[dict[str, str]]) -> str:
    if not errors:
        return "the request is not valid"
    parts = [f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors]
    return "; ".join(parts)


def _apiflask_error(error: HTTPError) -> Response:
    """APIFlask's HTTPError: validation (422) and auth (401/403) errors."""
    status = error.status_code
    headers = {str(key): str(value) for key, value in dict(error.headers or {}).items()}
    if status == 422:
        errors = _validation_errors(error.detail)
        body = problem(422, "Invalid input", _describe(errors), errors=errors)
    elif status == 401:
        body = problem(401, "Unauthorized", "a valid bearer token is required")
        headers.setdefault("WWW-Authenticate", 'Bearer realm="powerq"')
    elif status == 403:
        body = problem(403, "Forbidden", "this token's role may not do this")
    else:
        body = problem(status, error.message or "Error", str(error.message or status))
    return problem_response(body, headers)


def _integrity_error(error: IntegrityError) -> Response:
    log.warning("constraint hit by a concurrent change: %s", error.orig)
    return problem_response(
        problem(409, "Conflict", "the change conflicts with a concurrent one; retry")
    )


_RETRY_AFTER = {"Retry-After": str(RETRY_AFTER_S)}


def _database_error(error: DBAPIError) -> Response:
    if isinstance(error, OperationalError) or error.connection_invalidated:
        log.error("database unavailable: %s", error.orig)
        return _unavailable("the database cannot be reached or refused a connection")
    return _unexpected(error)


def _pool_timeout(error: PoolTimeoutError) -> Response:
    log.error("no database connection free: %s", error)
    return _unavailable("every database connection of this process is busy")


def _unavailable(reason: str) -> Response:
    """503 with ``Retry-After``: the call did not complete. A call's writes commit
    at its end, and work after the commit (ringing the lane, noting that) never
    fails it, so a 503 means nothing was recorded, except when the connection
    broke during the COMMIT itself (the outcome is unknown then). A retry is
    safe either way: the same power action finds its outstanding request (200),
    and an ``Idempotency-Key`` gets the first answer back."""
    detail = f"{reason}; retry in {RETRY_AFTER_S} s"
    return problem_response(problem(503, "Service unavailable", detail), _RETRY_AFTER)


def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error: %s", type(error).__name__)
    return problem_response(problem(500, "Internal error", "an unexpected error occurred"))


def auth_error(error: HTTPError) -> Response:
    """Flask-HTTPAuth's 401/403, as problems (registered on the auth object)."""
    return _apiflask_error(error)


def init_app(app: APIFlask) -> None:
    """Route every error of ``app`` to a problem+json response."""
    app.error_processor(_apiflask_error)
    handlers: list[tuple[type[Exception], Any]] = [
        (PowerqError, powerq_error_response),
        (HTTPException, _http_exception),
        (HTTPError, _apiflask_error),
        (IntegrityError, _integrity_error),
        (DBAPIError, _database_error),
        (PoolTimeoutError, _pool_timeout),
        (Exception, _unexpected),
    ]
    for exc_class, handler in handlers:
        app.register_error_handler(exc_class, handler)
