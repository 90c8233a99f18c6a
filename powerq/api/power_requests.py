"""Power requests and history: list requests (filtered by node, status and age),
read one, cancel a pending one, list a node's requests and its audit events
(newest first)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from apiflask import APIBlueprint, APIFlask
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from powerq.api.auth import OPERATOR, READER, auth, current_actor
from powerq.api.results import ViewResult
from powerq.api.schemas import EventPage, PageQuery, RequestPage, RequestQuery
from powerq.api.serializers import PowerRequestOut, event_out, request_out
from powerq.api.session import transaction
from powerq.errors import NotFound
from powerq.intents import cancel_request, find_node
from powerq.models import PowerEvent, PowerRequest

bp = APIBlueprint("requests", __name__, url_prefix="/v1", tag="Requests")


@bp.get("/requests")
@bp.auth_required(auth, roles=[READER])
@bp.input(RequestQuery, location="query", arg_name="query")
@bp.output(RequestPage)
@bp.doc(responses={404: "No node has the name given as `node`"})
def list_requests(query: RequestQuery) -> ViewResult:
    """List power requests, newest first

    Filters (all must match): `node`, `status` (comma-separated, any of them),
    `since` (a duration back from now such as `15m`, or an ISO 8601 time with
    its offset). A bad filter is 422 problem+json; an unknown node is 404.
    A node's requests come from the index on (node, created_at), outstanding
    ones from the partial indexes on pending and running requests, and a page
    of everyone's from the index on (created_at DESC, id DESC), this order.
    """
    with transaction() as session:
        found = select(PowerRequest).order_by(
            PowerRequest.created_at.desc(), PowerRequest.id.desc()
        )
        if query.node is not None:
            found = found.where(PowerRequest.node_id == find_node(session, query.node).id)
        if query.status is not None:
            found = found.where(PowerRequest.status.in_(query.statuses()))
        bound = query.since_bound()
        if bound is not None:
            since = func.now() - bound if isinstance(bound, timedelta) else bound
            found = found.where(PowerRequest.created_at >= since)
        rows, total = _page(session, found, query)
        items = [request_out(row) for row in rows]
        return RequestPage(items=items, total=total, limit=query.limit, offset=query.offset)


@bp.get("/requests/<uuid:request_id>")
@bp.auth_required(auth, roles=[READER])
@bp.output(PowerRequestOut)
def get_request(request_id: uuid.UUID) -> ViewResult:
    """One power request"""
    with transaction() as session:
        power_request = session.get(PowerRequest, request_id)
        if power_request is None:
            raise NotFound(f"no power request {request_id}")
        return request_out(power_request)


@bp.delete("/requests/<uuid:request_id>")
@bp.auth_required(auth, roles=[OPERATOR])
@bp.output(PowerRequestOut, description="The request, now cancelled")
@bp.doc(responses={409: "The request is running or finished (problem+json with `request`)"})
def delete_request(request_id: uuid.UUID) -> ViewResult:
    """Cancel a pending request

    Only a request no worker has claimed can be cancelled; a running one is
    never interrupted (nobody could say whether its command ran). Cancelling
    clears the desired power state the request had set.
    """
    with transaction() as session:
        return request_out(cancel_request(session, request_id, actor=current_actor()))


def _page(session: Session, query: Select[Any], page: PageQuery) -> tuple[list[Any], int]:
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.limit(page.limit).offset(page.offset))
    return list(rows), total


@bp.get("/nodes/<node:name>/requests")
@bp.auth_required(auth, roles=[READER])
@bp.input(PageQuery, location="query", arg_name="page")
@bp.output(RequestPage)
def list_node_requests(name: str, page: PageQuery) -> ViewResult:
    """A node's power requests, newest first"""
    with transaction() as session:
        node = find_node(session, name)
        query = (
            select(PowerRequest)
            .where(PowerRequest.node_id == node.id)
            .order_by(PowerRequest.created_at.desc(), PowerRequest.id.desc())
        )
        rows, total = _page(session, query, page)
        items = [request_out(row) for row in rows]
        return RequestPage(items=items, total=total, limit=page.limit, offset=page.offset)


@bp.get("/nodes/<node:name>/events")
@bp.auth_required(auth, roles=[READER])
@bp.input(PageQuery, location="query", arg_name="page")
@bp.output(EventPage)
def list_node_events(name: str, page: PageQuery) -> ViewResult:
    """A node's audit trail, newest first

    Every transition of the node and its requests: what happened, who or what
    caused it (`actor`), and when.
    """
    with transaction() as session:
        node = find_node(session, name)
        query = (
            select(PowerEvent)
            .where(PowerEvent.node_id == node.id)
            .order_by(PowerEvent.created_at.desc(), PowerEvent.id.desc())
        )
        rows, total = _page(session, query, page)
        items = [event_out(row, node.name) for row in rows]
        return EventPage(items=items, total=total, limit=page.limit, offset=page.offset)


def init_app(app: APIFlask) -> None:
    """Register the requests blueprint."""
    app.register_blueprint(bp)
