"""``Idempotency-Key``: a retried call gets the first call's response.

The first successful answer (200 or 202) to a call made with a key is stored in
``idempotent_responses`` **in the same transaction as the intent it reports**,
keyed by (actor, key). A retry by the same actor with the same key gets that
stored answer back (with ``Idempotent-Replayed: true``), whatever happened
since. Two concurrent first calls with one key cannot both record intent: the
primary key (and the index on ``power_requests(requested_by, idempotency_key)``)
lets one commit, and the other then replays what it committed.

Refusals (4xx) are not stored: they changed nothing, so a retry is evaluated
afresh. A key reused for a different call (another path, or another action) is
refused with 422.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from flask import Response, json, request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

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
    """Who made the call, with which key, to what."""

    actor: str
    key: str
    method: str
    path: str
    action: str


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


def find(session: Session, call: CallKey) -> IdempotentResponse | None:
    """The stored answer to an earlier call with ``call``'s key, if any.

    :raises InvalidInput: the key was used for a different call.
    """
    stored = session.get(IdempotentResponse, (call.actor, call.key))
    if stored is None:
        return None
    stored_action = (stored.body.get("request") or {}).get("action")
    if (stored.method, stored.path) != (call.method, call.path) or stored_action != call.action:
        raise InvalidInput(
            f"{HEADER} {call.key!r} was already used for another call "
            f"({stored.method} {stored.path}, action {stored_action!r}); use a new key"
        )
    return stored


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
