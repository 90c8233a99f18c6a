"""``Idempotency-Key``: a retried call gets the first call's response.

The first successful answer (200 or 202) to a call made with a key is stored in
``idempotent_responses`` **in the same transaction as the intent it reports**,
keyed by (actor, key). A retry by the same actor with the same key gets that
stored answer back (with ``Idempotent-Replayed: true``), whatever happened
since. Two concurrent first calls with one key cannot both record intent: the
primary key (and the index on ``power_requests(requested_by, idempotency_key)``)
lets one commit, and the other then replays what it committed.

Refusals (4xx) are not stored: they changed nothing, so a retry is evaluated
afresh. A key reused for a different call is refused with 422 naming the first
call: each answer is stored with a SHA-256 :func:`fingerprint` of the method,
path and canonical JSON body (:func:`powerq.api.jsonbody.canonical`: key
order, whitespace and ``60`` versus ``60.0`` do not matter), and a retry must
match it. Answers stored before fingerprints existed (``fingerprint`` NULL) are
matched on method, path and action, as they were then.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from flask import Response, json, request
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from powerq.api.auth import current_actor
from powerq.api.jsonbody import canonical
from powerq.db import session_scope
from powerq.errors import InvalidInput
from powerq.models import IdempotentResponse

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY = re.compile(r"[\x21-\x7e]{1,255}")
# Response headers worth replaying.
_KEPT_HEADERS = ("Location",)


@dataclass(frozen=True)
class CallKey:
    """Who made the call, with which key, to what (``fingerprint``: see :func:`fingerprint`)."""

    actor: str
    key: str
    method: str
    path: str
    action: str
    fingerprint: str


def key_from_request() -> str | None:
    """The request's ``Idempotency-Key``, or None when absent.

    :raises InvalidInput: the key is empty, longer than 255 or not printable ASCII.
    """
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not KEY.fullmatch(key):
        raise InvalidInput(f"{HEADER} must be 1-255 printable ASCII characters without spaces")
    return key


def call_key(action: str) -> CallKey | None:
    """The current call's idempotency identity (its actor, key, method, path,
    ``action`` and body), or None without an ``Idempotency-Key``.

    :raises InvalidInput: the header is malformed.
    """
    key = key_from_request()
    if key is None:
        return None
    return CallKey(
        current_actor(), key, request.method, request.path, action, request_fingerprint()
    )


def fingerprint(method: str, path: str, document: Any) -> str:
    """SHA-256 (hex) of a call: its method, path and canonical JSON body (None: no body)."""
    return hashlib.sha256(canonical([method, path, document]).encode("ascii")).hexdigest()


def request_fingerprint() -> str:
    """The :func:`fingerprint` of the current request (its body already parsed strictly).

    :raises MalformedBody: the body is not strict JSON (never, once a view has it).
    :raises UnsupportedMediaType: the body is not JSON (likewise).
    """
    document = request.get_json() if request.get_data(cache=True) else None
    return fingerprint(request.method, request.path, document)


def find(session: Session, call: CallKey) -> IdempotentResponse | None:
    """The stored answer to an earlier call with ``call``'s key, if any.

    :raises InvalidInput: the key was used for a different call.
    """
    stored = session.get(IdempotentResponse, (call.actor, call.key))
    if stored is None:
        return None
    if stored.fingerprint is None:
        _check_legacy(stored, call)
    elif stored.fingerprint != call.fingerprint:
        raise _reused(stored, call)
    return stored


def _reused(stored: IdempotentResponse, call: CallKey) -> InvalidInput:
    """The refusal of ``call``, whose key ``stored`` answered a different call."""
    same_target = (stored.method, stored.path) == (call.method, call.path)
    what = " with a different body" if same_target else ""
    at = stored.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return InvalidInput(
        f"{HEADER} {call.key!r} was first used for {stored.method} {stored.path}{what} "
        f"at {at}; use a new key for a different request"
    )


def _check_legacy(stored: IdempotentResponse, call: CallKey) -> None:
    """Match a call against an answer stored without a fingerprint (method, path, action).

    :raises InvalidInput: the key was used for a different call.
    """
    stored_action = (stored.body.get("request") or {}).get("action")
    if (stored.method, stored.path) != (call.method, call.path) or stored_action != call.action:
        raise InvalidInput(
            f"{HEADER} {call.key!r} was already used for another call "
            f"({stored.method} {stored.path}, action {stored_action!r}); use a new key"
        )


def remember(
    session: Session, call: CallKey, status: int, body: dict[str, Any], headers: dict[str, str]
) -> None:
    """Store the answer to ``call`` in the caller's transaction.

    Flushed at once: a concurrent first call with the same key blocks here until
    the other transaction ends, and fails if that one committed.

    :raises IntegrityError: an answer for (actor, key) was committed meanwhile.
    """
    kept = {name: headers[name] for name in _KEPT_HEADERS if name in headers}
    session.add(
        IdempotentResponse(
            actor=call.actor,
            key=call.key,
            method=call.method,
            path=call.path,
            status_code=status,
            body=body,
            headers=kept,
            fingerprint=call.fingerprint,
        )
    )
    session.flush()


def note_dispatched(call: CallKey) -> None:
    """Record in the stored answer that the lane was woken after commit.

    Best effort: the answer was stored with ``dispatched: false`` and stays so
    if this fails (logged), which only understates what happened.
    """
    try:
        with session_scope() as session:
            stored = session.get(IdempotentResponse, (call.actor, call.key), with_for_update=True)
            if stored is not None:
                stored.body = {**stored.body, "dispatched": True}
    except SQLAlchemyError as exc:
        log.warning("could not note the dispatch of idempotent call %s: %s", call.key, exc)


def replace_body(call: CallKey, body: dict[str, Any]) -> None:
    """Replace the stored answer's body (e.g. once the lane could not be rung after all).

    Best effort, one statement: a failure is logged and the answer stays as stored.
    """
    try:
        with session_scope() as session:
            session.execute(
                update(IdempotentResponse)
                .where(IdempotentResponse.actor == call.actor, IdempotentResponse.key == call.key)
                .values(body=body)
            )
    except SQLAlchemyError as exc:
        log.warning("could not correct the stored answer of idempotent call %s: %s", call.key, exc)


def stored_answer(call: CallKey) -> IdempotentResponse | None:
    """The stored answer to ``call``'s key, read in a fresh transaction.

    :raises InvalidInput: the key was used for a different call.
    """
    with session_scope() as session:
        return find(session, call)


def replay(stored: IdempotentResponse) -> Response:
    """The stored answer as a response, marked as replayed."""
    headers = {**stored.headers, REPLAYED_HEADER: "true"}
    return Response(
        json.dumps(stored.body),
        status=stored.status_code,
        headers=headers,
        mimetype="application/json",
    )
