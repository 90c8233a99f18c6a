"""Power: ask for an action on a node, and read its observed versus desired state.

``POST /v1/nodes/{name}/power`` records intent in one short transaction
(:func:`powerq.intents.request_power`; the partial unique index decides races),
commits, and only then, for a new request, wakes the node's lane. Answers:

* 202: a new request (``Location`` names it; ``dispatched`` says whether the
  lane was woken; when the broker is down the intent is still durable and the
  sweeper dispatches it later);
* 200: the identical action was already outstanding: that request;
* 409: another action is outstanding: refused, the outstanding request in the
  problem document. An in-flight request is never cancelled or replaced.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from apiflask import APIBlueprint, APIFlask
from flask import Response, current_app, request, url_for
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from powerq.api import idempotency, openapi
from powerq.api.auth import OPERATOR, READER, auth, current_actor
from powerq.api.idempotency import CallKey
from powerq.api.results import ViewResult
from powerq.api.rowjson import request_json
from powerq.api.schemas import BootDeviceIn, PowerAccepted, PowerIn
from powerq.api.serializers import PowerStatusOut, power_status_out, request_out
from powerq.api.session import transaction
from powerq.db import get_engine
from powerq.errors import MalformedBody
from powerq.intents import find_node, record_new, request_power
from powerq.inventory import outstanding_by_node
from powerq.models import PowerRequest
from powerq.states import Action, BootDevice
from powerq.tasks.dispatch import dispatch_request, ring_marked

log = logging.getLogger(__name__)

bp = APIBlueprint("power", __name__, url_prefix="/v1/nodes", tag="Power")


@dataclass(frozen=True)
class Recorded:
    """A committed answer to a power request, before the lane is woken."""

    status: int
    body: dict[str, Any]  # the PowerAccepted answer, as JSON
    headers: dict[str, str]
    request_id: uuid.UUID
    node_name: str
    # Written as dispatched at this time (the one-statement path): ring the lane,
    # and take the mark back if that fails.
    marked_at: datetime | None = None

    @property
    def created(self) -> bool:
        """Whether a new request was recorded (and must be dispatched)."""
        return self.status == 202


_RESPONSES: dict[int | str, dict[str, str | dict[str, dict[str, Any]]]] = {
    200: {
        "description": "The same action was already outstanding: that request",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PowerAccepted"}}},
    },
    409: {"description": "Another action is outstanding (problem+json with `outstanding`)"},
}


@bp.post("/<node:name>/power")
@bp.auth_required(auth, roles=[OPERATOR])
@bp.input(PowerIn, arg_name="body")
@bp.output(PowerAccepted, status_code=202, description="A new request was recorded")
@bp.doc(responses=_RESPONSES)
def post_power(name: str, body: PowerIn) -> ViewResult:
    """Request a power action

    `on`/`off`/`soft_off` set the desired power state (soft_off → off),
    `cycle`/`reset` set it to on, `query` leaves it. With `boot_device`
    (on, cycle, reset) the boot device is set first, in the same request.
    Send `Idempotency-Key` to make retries safe: a retry with the same key and
    body gets the first answer back; the same key with a different body is
    refused (422).
    """
    ask = Ask(
        body.action,
        deadline_s=body.deadline_s,
        soft_fallback=body.soft_fallback,
        boot_device=body.boot_device,
        boot_persistent=body.boot_persistent,
    )
    return _ask(name, ask)


@bp.put("/<node:name>/boot-device")
@bp.auth_required(auth, roles=[OPERATOR])
@bp.input(BootDeviceIn, arg_name="body")
@bp.output(PowerAccepted, status_code=202, description="A new request was recorded")
@bp.doc(responses=_RESPONSES)
def put_boot_device(name: str, body: BootDeviceIn) -> ViewResult:
    """Set the boot device

    A request like a power action, run on the node's lane (never at the same
    time as one of its power actions): the device is set, then read back
    where the BMC allows (`evidence` `boot_device`; `acknowledged` when it
    cannot be read back). To boot from it, request a power action, or send
    `boot_device` with `cycle` in one request.
    """
    ask = Ask(
        Action.BOOT,
        deadline_s=body.deadline_s,
        boot_device=body.device,
        boot_persistent=body.persistent,
    )
    return _ask(name, ask)


@bp.post("/<node:name>/validate")
@bp.auth_required(auth, roles=[OPERATOR])
@bp.output(PowerAccepted, status_code=202, description="A new request was recorded")
@bp.doc(responses=_RESPONSES)
def post_validate(name: str) -> ViewResult:
    """Check the node's BMC credentials and reachability

    A request on the node's lane that logs in and reads the power state. It
    succeeds with the state read, or fails with what is wrong in one line
    (unreachable, authentication refused, cipher suite or protocol, TLS, no
    such system). It takes no body.
    """
    if request.get_data(cache=True):
        raise MalformedBody("POST /v1/nodes/{name}/validate takes no body; send none")
    return _ask(name, Ask(Action.VALIDATE))


@dataclass(frozen=True)
class Ask:
    """What a call asks for, whichever endpoint it came through."""

    action: Action
    deadline_s: float | None = None
    soft_fallback: bool = False
    boot_device: BootDevice | None = None
    boot_persistent: bool = False


def _ask(name: str, ask: Ask) -> ViewResult:
    """Record ``ask`` (replaying an idempotent retry), then wake the lane."""
    call = idempotency.call_key(ask.action.value)
    if call is not None and (stored := idempotency.stored_answer(call)) is not None:
        return idempotency.replay(stored)
    try:
        recorded = _record(name, ask, call)
    except IntegrityError:
        # A concurrent first call with the same key committed first: answer as it did.
        stored = idempotency.stored_answer(call) if call is not None else None
        if stored is None:
            raise
        return idempotency.replay(stored)
    return _dispatch_and_answer(recorded, call, ask.action)


def _record(name: str, ask: Ask, call: CallKey | None) -> Recorded:
    """Record the intent and (with a key) its answer, in one transaction: one
    statement when the node has nothing outstanding (see :func:`record_new`).

    :raises NotFound: no such node.
    :raises ConflictingRequest: another action is outstanding.
    :raises InvalidInput: the deadline or soft_fallback is not acceptable.
    :raises IntegrityError: a concurrent call with the same key won.
    """
    if call is None:
        with _statement_commits() as connection:
            recorded = _record_new(connection, name, ask, call)
        if recorded is not None:
            return recorded
    with transaction() as session:
        recorded = (_record_new(session, name, ask, call) if call is not None else None) or (
            _record_other(session, name, ask, call)
        )
        if call is not None:
            idempotency.remember(session, call, recorded.status, recorded.body, recorded.headers)
    return recorded


@contextlib.contextmanager
def _statement_commits() -> Iterator[Connection]:
    """A connection whose every statement commits by itself: no BEGIN and COMMIT
    round trips (and no ORM session), for work that is one statement, atomic
    on its own.

    :raises ConfigError: no database URL is configured.
    """
    with get_engine().connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


def _record_new(
    session: Session | Connection, name: str, ask: Ask, call: CallKey | None
) -> Recorded | None:
    """The common case in one statement: a new request, written as dispatched
    (the lane is rung right after commit). None when the node has a request
    outstanding (nothing written).

    :raises NotFound: no such node.
    :raises InvalidInput: the deadline or soft_fallback is not acceptable.
    :raises IntegrityError: a concurrent call with the same key won.
    """
    row = record_new(
        session,
        name,
        ask.action,
        actor=current_actor(),
        deadline_s=ask.deadline_s,
        soft_fallback=ask.soft_fallback,
        idempotency_key=call.key if call is not None else None,
        boot_device=ask.boot_device,
        boot_persistent=ask.boot_persistent,
        dispatching=True,
    )
    if row is None:
        return None
    body = {"created": True, "dispatched": True, "request": request_json(row, name)}
    return Recorded(202, body, _location(row["id"]), row["id"], name, row["dispatched_at"])


def _record_other(session: Session, name: str, ask: Ask, call: CallKey | None) -> Recorded:
    """The node has a request outstanding: answer with it (identical) or refuse,
    or record anew if it finished meanwhile (:func:`request_power`).

    :raises NotFound: no such node.
    :raises ConflictingRequest: another action is outstanding.
    :raises IntegrityError: a concurrent call with the same key won.
    """
    node = find_node(session, name)
    intent = request_power(
        session,
        node,
        ask.action,
        actor=current_actor(),
        deadline_s=ask.deadline_s,
        soft_fallback=ask.soft_fallback,
        idempotency_key=call.key if call is not None else None,
        boot_device=ask.boot_device,
        boot_persistent=ask.boot_persistent,
    )
    return _answer(intent.created, intent.request, node.name)


def _answer(created: bool, power_request: PowerRequest, node_name: str) -> Recorded:
    accepted = PowerAccepted(
        created=created,
        dispatched=power_request.dispatched_at is not None,
        request=request_out(power_request),
    )
    return Recorded(
        status=202 if created else 200,
        body=accepted.model_dump(mode="json"),
        headers=_location(power_request.id),
        request_id=power_request.id,
        node_name=node_name,
    )


def _location(request_id: uuid.UUID) -> dict[str, str]:
    return {"Location": url_for("requests.get_request", request_id=request_id)}


def _dispatch_and_answer(recorded: Recorded, call: CallKey | None, action: Action) -> ViewResult:
    """Wake the lane for a new request (after commit) and answer (``action``: shown
    with the node in Flower's task list).

    The answer is a finished response (``@output`` passes it through): its body
    is already JSON (:func:`powerq.api.rowjson.request_json` on the hot path).
    """
    body = recorded.body
    if recorded.marked_at is not None:
        if not ring_marked(recorded.request_id, recorded.node_name, recorded.marked_at, action):
            body = _undispatched(body)
            if call is not None:
                idempotency.replace_body(call, body)
    elif recorded.created:
        dispatched = dispatch_request(recorded.request_id, recorded.node_name, action)
        body = {**body, "dispatched": dispatched}
        if dispatched and call is not None:
            idempotency.note_dispatched(call)
    response = cast(Response, current_app.json.response(body))  # what jsonify makes
    response.status_code = recorded.status
    response.headers.update(recorded.headers)
    return response


def _undispatched(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` once the lane could not be rung (the mark was taken back)."""
    request = {**body["request"], "dispatched_at": None, "dispatch_count": 0}
    return {**body, "dispatched": False, "request": request}


@bp.get("/<node:name>/power")
@bp.auth_required(auth, roles=[READER])
@bp.output(PowerStatusOut)
def get_power(name: str) -> ViewResult:
    """Observed and desired power state

    The state last read from the BMC and when, the desired state, whether they
    agree, the outstanding request, the last error and the fault flag.
    """
    with transaction() as session:
        node = find_node(session, name)
        outstanding = outstanding_by_node(session, [node.id]).get(node.id)
        return power_status_out(node, outstanding)


for _path, _method in (
    ("/v1/nodes/{name}/power", "post"),
    ("/v1/nodes/{name}/boot-device", "put"),
    ("/v1/nodes/{name}/validate", "post"),
):
    openapi.document_header(
        _path,
        _method,
        {
            "name": idempotency.HEADER,
            "in": "header",
            "required": False,
            "description": "Makes retries safe: a retry with the same key gets the first answer",
            "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"},
        },
    )


def init_app(app: APIFlask) -> None:
    """Register the power blueprint."""
    app.register_blueprint(bp)
