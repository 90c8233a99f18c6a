"""Batches: one power action on many nodes, paced by the server.

``POST /v1/batches`` creates the batch and one request per node in one
transaction (:func:`powerq.batches.create_batch`: identical outstanding
requests are reused, conflicting ones refuse that node, nothing else is
disturbed), commits, and only then publishes what may start at once. Every batch has a
deadline: its requests not started by then fail. ``DELETE /v1/batches/{id}``
cancels what has not started. Operators create and cancel batches; readers
read them.

The POST takes an ``Idempotency-Key`` (:mod:`powerq.api.idempotency`): its
first answer is stored in the creating transaction, without the per-node
results (they are the batch's, read afresh), and a retry with the same key and
body answers 201 with the same batch as it stands now
(``Idempotent-Replayed: true``) instead of making a second one; the same key
with another body is refused with 422.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, cast

from apiflask import APIBlueprint, APIFlask
from flask import Response, current_app, url_for
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    model_validator,
)
from sqlalchemy.exc import IntegrityError

from powerq.api import idempotency, openapi
from powerq.api.auth import OPERATOR, READER, auth, current_actor
from powerq.api.idempotency import CallKey
from powerq.api.results import ViewResult
from powerq.api.schemas import (
    BatchAction,
    JsonBody,
    NodeName,
    Omittable,
    PageQuery,
    QueryString,
    Tag,
    _number_not_text,
)
from powerq.api.serializers import OutModel, PowerRequestOut, UtcDatetime, request_out
from powerq.api.session import transaction
from powerq.batches import (
    MAX_BATCH_DEADLINE_S,
    MAX_BATCH_NODES,
    MAX_RESULTS_PAGE,
    MAX_STAGGER_S,
    RESULTS_PAGE,
    BatchSpec,
    BatchView,
    CancelledBatch,
    Ended,
    NodeResult,
    Selector,
    State,
    batch_view,
    cancel_batch,
    create_batch,
    given_selector,
    list_batches,
    skipped_of,
)
from powerq.intents import MAX_DEADLINE_S
from powerq.states import Action
from powerq.tasks.batch_pump import dispatch_releases

bp = APIBlueprint("batches", __name__, url_prefix="/v1/batches", tag="Batches")


NameGlob = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9._*?-]{1,63}$"),
    Field(description="Node name pattern: `*` matches any run of characters, `?` one"),
]
BatchName = Annotated[str, StringConstraints(max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
# A JSON Schema integer: 4 or 4.0, never "4" or true.
InFlight = Annotated[
    int, Field(ge=1, le=MAX_BATCH_NODES), Strict(False), BeforeValidator(_number_not_text)
]


def _schema_with(*alternatives: dict[str, Any], key: str) -> Any:
    """json_schema_extra: drop ``default: null`` of omittable members and add
    ``key`` (anyOf/oneOf) naming which members must be present."""

    def extra(schema: dict[str, Any]) -> None:
        for member in schema.get("properties", {}).values():
            if "default" in member and member["default"] is None:
                del member["default"]
        schema[key] = list(alternatives)

    return extra


class SelectorIn(JsonBody):
    """Which nodes: every given criterion must match; `all: true` selects every
    node and is required when neither tags nor a name pattern is given."""

    model_config = ConfigDict(
        json_schema_extra=_schema_with(
            {"required": ["all"], "properties": {"all": {"const": True}}},
            {"required": ["tags"]},
            {"required": ["name_glob"]},
            key="anyOf",
        )
    )

    tags: Omittable[Annotated[list[Tag], Field(min_length=1, max_length=64)]] = Field(
        default=None, description="Nodes having all these tags"
    )
    name_glob: Omittable[NameGlob] = None
    all: bool = Field(default=False, description="Every node (needed when nothing else is given)")

    @model_validator(mode="after")
    def _not_empty(self) -> SelectorIn:
        if not (self.all or self.tags or self.name_glob):
            raise ValueError("give tags, a name_glob, or all: true")
        return self

    def selector(self) -> Selector:
        """The domain's view of this selector."""
        return Selector(tuple(self.tags or ()), self.name_glob, self.all)


class BatchIn(JsonBody):
    """A power action for many nodes: named (`nodes`) or selected (`selector`)."""

    model_config = ConfigDict(
        json_schema_extra=_schema_with(
            {"required": ["nodes"]}, {"required": ["selector"]}, key="oneOf"
        )
    )

    action: BatchAction
    nodes: Omittable[Annotated[list[NodeName], Field(min_length=1, max_length=MAX_BATCH_NODES)]] = (
        Field(default=None, description="Node names, in the order they are to be started")
    )
    selector: Omittable[SelectorIn] = None
    stagger_s: Annotated[float, Field(ge=0, le=MAX_STAGGER_S)] = Field(
        default=0.0, description="Least seconds between the starts of two of the batch's requests"
    )
    max_in_flight: Omittable[InFlight] = Field(
        default=None, description="Most of the batch's requests started and unfinished at once"
    )
    name: Omittable[BatchName] = None
    deadline_s: Omittable[Annotated[float, Field(ge=1, le=MAX_DEADLINE_S)]] = Field(
        default=None, description="Seconds each request may take (default depends on the action)"
    )
    include_maintenance: bool = Field(
        default=False,
        description="A selector also picks nodes in maintenance (left out and reported in "
        "`skipped` otherwise); named nodes always run",
    )
    batch_deadline_s: Omittable[Annotated[float, Field(ge=1, le=MAX_BATCH_DEADLINE_S)]] = Field(
        default=None,
        description="Seconds from now until requests of the batch no worker has started fail "
        "(default: from the pacing, max(nodes * stagger_s, ceil(nodes / max_in_flight) * "
        "(stagger_s + deadline_s)) + 300, at most 7 days). Refused when (nodes - 1) * stagger_s "
        "does not fit",
    )

    @model_validator(mode="after")
    def _nodes_or_selector(self) -> BatchIn:
        if (self.nodes is None) == (self.selector is None):
            raise ValueError("give either nodes or a selector, not both")
        return self

    def spec(self) -> BatchSpec:
        """The domain's view of this body."""
        return BatchSpec(
            action=self.action,
            nodes=tuple(self.nodes) if self.nodes is not None else None,
            selector=self.selector.selector() if self.selector is not None else None,
            stagger_s=self.stagger_s,
            max_in_flight=self.max_in_flight,
            name=self.name,
            deadline_s=self.deadline_s,
            batch_deadline_s=self.batch_deadline_s,
            include_maintenance=self.include_maintenance,
        )


class BatchQuery(QueryString):
    """Whether to include each node's result, and which page of them."""

    results: bool = Field(default=True, description="false: counts only (cheap to poll)")
    limit: int = Field(
        default=RESULTS_PAGE, ge=1, le=MAX_RESULTS_PAGE, description="Nodes per page of results"
    )
    offset: int = Field(
        default=0, ge=0, le=MAX_BATCH_NODES, description="Results to skip (batch order)"
    )


class BatchNodeOut(OutModel):
    """One node of a batch and how it stands."""

    node: str
    outcome: Literal["created", "existing", "refused"] = Field(
        description="created: a new request; existing: the identical outstanding request was "
        "reused; refused: another action is outstanding (see `outstanding`)"
    )
    state: State = Field(
        description="The request's status, `held` (waiting for its batch's turn) or `refused`"
    )
    request: PowerRequestOut | None = Field(description="The request carrying the action")
    outstanding: PowerRequestOut | None = Field(description="refused: the conflicting request")
    error: str | None = Field(description="Why the request failed, or why the node was refused")


class BatchCounts(OutModel):
    """Nodes of the batch per state."""

    held: int
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    refused: int


class BatchOutcomes(OutModel):
    """Nodes of the batch per outcome at creation."""

    created: int
    existing: int
    refused: int


class SkippedOut(OutModel):
    """A node the selector matched but left out."""

    node: str
    reason: Literal["maintenance"]


class BatchOut(OutModel):
    """A batch, its counts and (unless `results=false`) its per-node results."""

    id: uuid.UUID
    name: str | None
    action: Action
    stagger_s: float
    max_in_flight: int | None
    selector: dict[str, Any] = Field(description="The nodes or selector as given")
    skipped: list[SkippedOut] = Field(
        description="Nodes the selector matched but left out (in maintenance, without "
        "include_maintenance); not counted in `total`"
    )
    requested_by: str
    created_at: UtcDatetime
    deadline_at: UtcDatetime | None = Field(
        description="Requests of the batch not started by then fail (and free their nodes)"
    )
    cancelled_at: UtcDatetime | None = Field(description="When the batch was cancelled")
    total: int
    finished: bool = Field(description="No node of the batch has work outstanding")
    outcomes: BatchOutcomes
    counts: BatchCounts
    nodes: list[BatchNodeOut] | None = Field(
        description="One page of the nodes' results, in batch order (the order the nodes "
        "were given, or by name for a selector); `total` nodes in all"
    )
    limit: int | None = Field(description="Most nodes in `nodes` (null without results)")
    offset: int | None = Field(description="Position of the first of `nodes` in the batch")


class EndedOut(OutModel):
    """One node's request and what became of it."""

    node: str
    request_id: uuid.UUID


class CancelCounts(OutModel):
    """How many requests were cancelled, and how many are running and will finish."""

    cancelled: int
    running: int


class BatchCancelOut(OutModel):
    """What cancelling a batch did."""

    id: uuid.UUID
    cancelled_at: UtcDatetime | None = Field(description="When the batch was first cancelled")
    counts: CancelCounts
    cancelled: list[EndedOut] = Field(description="Held or pending requests now cancelled")
    running: list[EndedOut] = Field(description="Requests already running: they finish")


class BatchPage(BaseModel):
    """One page of batches, newest first (without per-node results)."""

    items: list[BatchOut]
    total: int
    limit: int
    offset: int


def _node_out(result: NodeResult) -> BatchNodeOut:
    return BatchNodeOut(
        node=result.node,
        outcome=result.outcome,
        state=result.state,
        request=request_out(result.request) if result.request is not None else None,
        outstanding=request_out(result.conflicting) if result.conflicting is not None else None,
        error=result.error,
    )


def batch_out(view: BatchView) -> BatchOut:
    """The outside view of a batch."""
    batch = view.batch
    return BatchOut(
        id=batch.id,
        name=batch.name,
        action=batch.action,
        stagger_s=batch.stagger_s,
        max_in_flight=batch.max_in_flight,
        selector=given_selector(batch),
        skipped=[SkippedOut(node=s["node"], reason="maintenance") for s in skipped_of(batch)],
        requested_by=batch.requested_by,
        created_at=batch.created_at,
        deadline_at=batch.deadline_at,
        cancelled_at=batch.cancelled_at,
        total=view.total,
        finished=view.finished,
        outcomes=BatchOutcomes(**view.outcomes),
        counts=BatchCounts(**view.counts),
        nodes=None if view.results is None else [_node_out(r) for r in view.results],
        limit=view.limit,
        offset=view.offset,
    )


@bp.post("")
@bp.auth_required(auth, roles=[OPERATOR])
@bp.input(BatchIn, arg_name="body")
@bp.output(
    BatchOut,
    status_code=201,
    description="The batch and the first page of its nodes' results (refused ones included)",
)
@bp.doc(responses={404: "A named node does not exist, or the selector matches none"})
def post_batch(body: BatchIn) -> ViewResult:
    """Run a power action on many nodes

    One request per node, in one transaction, with the rules of single
    requests: a node whose identical request is outstanding reuses it
    (`existing`), one with another action outstanding is `refused` (the
    conflicting request is in `outstanding`), nothing else is disturbed.
    `max_in_flight` and `stagger_s` are enforced by the server: requests wait
    `held` until their turn, across restarts. A selector leaves out nodes in
    maintenance (`skipped`) unless `include_maintenance`. Send
    `Idempotency-Key` to make retries safe: a retry with the same key and body
    answers with the same batch (as it stands now), never a second one.
    """
    call = idempotency.call_key(body.action.value)
    if call is not None and (stored := idempotency.stored_answer(call)) is not None:
        return _replay(stored.body["id"])
    try:
        out, releases = _create(body, call)
    except IntegrityError:
        # A concurrent first call with the same key committed first: answer with its batch.
        stored = idempotency.stored_answer(call) if call is not None else None
        if stored is None:
            raise
        return _replay(stored.body["id"])
    dispatch_releases(releases)
    return out, 201, _location(out.id)


def _create(body: BatchIn, call: CallKey | None) -> tuple[BatchOut, list[Any]]:
    """Create the batch and (with a key) store its answer, in one transaction.

    :raises InvalidInput: see :func:`powerq.batches.create_batch`.
    :raises NotFound: see :func:`powerq.batches.create_batch`.
    :raises IntegrityError: a concurrent call with the same key won.
    """
    with transaction() as session:
        created = create_batch(session, body.spec(), actor=current_actor())
        session.flush()
        out = batch_out(batch_view(session, created.batch.id))
        if call is not None:
            stored = out.model_dump(mode="json", exclude={"nodes", "limit", "offset"})
            idempotency.remember(session, call, 201, stored, _location(out.id))
    return out, created.releases


def _location(batch_id: uuid.UUID) -> dict[str, str]:
    return {"Location": url_for("batches.get_batch", batch_id=batch_id)}


def _replay(batch_id: str) -> Response:
    """The answer to a retried POST: the same batch as it stands now, marked replayed."""
    with transaction() as session:
        out = batch_out(batch_view(session, uuid.UUID(batch_id)))
    response = cast(Response, current_app.json.response(out.model_dump(mode="json")))
    response.status_code = 201
    response.headers.update(_location(out.id))
    response.headers[idempotency.REPLAYED_HEADER] = "true"
    return response


def _ended_out(ended: list[Ended]) -> list[EndedOut]:
    return [EndedOut(node=e.node_name, request_id=e.request_id) for e in ended]


def cancel_out(result: CancelledBatch) -> BatchCancelOut:
    """The outside view of a cancellation."""
    return BatchCancelOut(
        id=result.batch.id,
        cancelled_at=result.batch.cancelled_at,
        counts=CancelCounts(cancelled=len(result.cancelled), running=len(result.running)),
        cancelled=_ended_out(result.cancelled),
        running=_ended_out(result.running),
    )


@bp.delete("/<uuid:batch_id>")
@bp.auth_required(auth, roles=[OPERATOR])
@bp.output(BatchCancelOut, description="What was cancelled, and what is running and will finish")
@bp.doc(responses={404: "No such batch"})
def delete_batch(batch_id: uuid.UUID) -> ViewResult:
    """Cancel a batch

    Cancels, in one transaction, every request of the batch that no worker has
    claimed (held or pending); running ones finish. Each node's desired power
    state goes back to what it was before the request. Cancelling again is
    harmless: nothing is left to cancel.
    """
    with transaction() as session:
        return cancel_out(cancel_batch(session, batch_id, actor=current_actor()))


@bp.get("/<uuid:batch_id>")
@bp.auth_required(auth, roles=[READER])
@bp.input(BatchQuery, location="query", arg_name="query")
@bp.output(BatchOut)
def get_batch(batch_id: uuid.UUID, query: BatchQuery) -> ViewResult:
    """One batch: counts per state and a page of its nodes' results

    Results come in batch order, `limit` at a time from `offset`; `total` says
    how many nodes the batch has.
    """
    with transaction() as session:
        view = batch_view(
            session, batch_id, results=query.results, limit=query.limit, offset=query.offset
        )
        return batch_out(view)


@bp.get("")
@bp.auth_required(auth, roles=[READER])
@bp.input(PageQuery, location="query", arg_name="page")
@bp.output(BatchPage)
def get_batches(page: PageQuery) -> ViewResult:
    """List batches, newest first (counts only)"""
    with transaction() as session:
        views, total = list_batches(session, limit=page.limit, offset=page.offset)
        items = [batch_out(view) for view in views]
    return BatchPage(items=items, total=total, limit=page.limit, offset=page.offset)


openapi.document_header(
    "/v1/batches",
    "post",
    {
        "name": idempotency.HEADER,
        "in": "header",
        "required": False,
        "description": "Makes retries safe: a retry with the same key and body answers with "
        "the same batch, never a second one",
        "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"},
    },
)


def init_app(app: APIFlask) -> None:
    """Register the batches blueprint."""
    app.register_blueprint(bp)
