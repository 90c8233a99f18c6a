"""Nodes: register, list (filters, pages), read, change, delete, import a manifest.

Admins manage nodes; readers read them. The BMC password is write-only: it is
accepted here, encrypted by the inventory, and never part of any answer.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from apiflask import APIBlueprint, APIFlask
from flask import Response, request, url_for
from pydantic import ValidationError

from powerq import imports
from powerq.api import openapi
from powerq.api.auth import ADMIN, READER, auth, current_actor
from powerq.api.results import ViewResult
from powerq.api.schemas import (
    ImportQuery,
    ImportReport,
    ImportRowOut,
    NodeIn,
    NodePage,
    NodePatch,
)
from powerq.api.serializers import NodeOut, node_out
from powerq.api.session import transaction
from powerq.api.summary_schemas import FleetNodeQuery
from powerq.errors import InvalidInput
from powerq.fleet_summary import FleetFilter, list_fleet
from powerq.intents import find_node, request_power
from powerq.inventory import (
    ImportOutcome,
    create_node,
    delete_node,
    list_nodes,
    outstanding_by_node,
    update_node,
)
from powerq.node_options import ALL_OPTIONS
from powerq.states import Action
from powerq.tasks.dispatch import dispatch_request

bp = APIBlueprint("nodes", __name__, url_prefix="/v1/nodes", tag="Nodes")

IMPORT_COLUMNS = ("name", "driver", "address", "port", "username", "password")
IMPORT_FIELDS = (*IMPORT_COLUMNS, "tags", *ALL_OPTIONS)
CSV_MIME = "text/csv"
# The header line is fixed (tags optional); data rows follow.
CSV_BODY_PATTERN = r"^\ufeff?" + ",".join(IMPORT_COLUMNS) + r"(,tags)?(\r?\n[\s\S]*)?$"
_CSV_BODY = re.compile(CSV_BODY_PATTERN)


@bp.post("")
@bp.auth_required(auth, roles=[ADMIN])
@bp.input(NodeIn, arg_name="body")
@bp.output(NodeOut, status_code=201, description="The node, registered")
@bp.doc(
    responses={
        409: "A node with this name exists, or the BMC endpoint (address in any case, "
        "port) is already registered as another node (`existing_node` names it)",
        422: "Invalid input, or a driver that is not enabled (`enabled_drivers` lists them)",
    }
)
def post_node(body: NodeIn) -> ViewResult:
    """Register a node

    One machine, one node: a BMC endpoint can be registered only once. The
    driver must be one of the enabled ones (`POWERQ_DRIVERS`). With
    `"validate": true` a credential check is queued at once (see
    `POST /v1/nodes/{name}/validate`).
    """
    with transaction() as session:
        node = create_node(session, body.spec(), actor=current_actor())
        check = None
        if body.validate_bmc:
            check = request_power(session, node, Action.VALIDATE, actor=current_actor()).request
        out = node_out(node, check)
    if check is not None:
        dispatch_request(check.id, out.name, Action.VALIDATE)
    return out, 201, {"Location": url_for("nodes.get_node", name=out.name)}


@bp.get("")
@bp.auth_required(auth, roles=[READER])
@bp.input(FleetNodeQuery, location="query", arg_name="query")
@bp.output(NodePage)
def get_nodes(query: FleetNodeQuery) -> ViewResult:
    """List nodes

    Sorted by name; every given filter must match. `tag=a,b` selects nodes
    that have both tags. `changed_since` lists only nodes changed since then,
    and `name_from`/`name_to` only a range of names (the status page's delta
    refresh of the page it shows).
    """
    with transaction() as session:
        page = {"limit": query.limit, "offset": query.offset}
        fleet = query.fleet_filter()
        if fleet == FleetFilter(fleet.nodes):  # only the plain list's filters
            nodes, total = list_nodes(session, fleet.nodes, **page)
        else:
            nodes, total = list_fleet(session, fleet, **page)
        outstanding = outstanding_by_node(session, [node.id for node in nodes])
        items = [node_out(node, outstanding.get(node.id)) for node in nodes]
    return NodePage(items=items, total=total, limit=query.limit, offset=query.offset)


@bp.get("/<node:name>")
@bp.auth_required(auth, roles=[READER])
@bp.output(NodeOut)
def get_node(name: str) -> ViewResult:
    """One node, with its outstanding request"""
    with transaction() as session:
        node = find_node(session, name)
        return node_out(node, outstanding_by_node(session, [node.id]).get(node.id))


@bp.patch("/<node:name>")
@bp.auth_required(auth, roles=[ADMIN])
@bp.input(NodePatch, arg_name="body")
@bp.output(NodeOut)
@bp.doc(
    responses={
        409: "The new BMC address/port is already registered as another node "
        "(`existing_node` names it)",
        422: "Invalid input, or a driver that is not enabled (`enabled_drivers` lists them)",
    }
)
def patch_node(name: str, body: NodePatch) -> ViewResult:
    """Change a node

    Maintenance, BMC address and credentials, tags; `desired_power_state: null`
    withdraws the desired state (only power requests set it). Nothing changes
    when any part is refused.
    """
    with transaction() as session:
        node = find_node(session, name, lock=True)
        update_node(session, node, body.changes(), actor=current_actor())
        session.flush()
        session.refresh(node)
        return node_out(node, outstanding_by_node(session, [node.id]).get(node.id))


@bp.delete("/<node:name>")
@bp.auth_required(auth, roles=[ADMIN])
@bp.doc(
    responses={
        204: "Deleted; its requests and events are kept",
        409: "A request is outstanding (problem+json with `outstanding`)",
    }
)
def remove_node(name: str) -> ViewResult:
    """Delete a node

    Refused while a request is outstanding on it. The node disappears from
    every listing and lookup by name, and its name and BMC endpoint can be
    registered again; its power requests stay readable at
    `/v1/requests/{request_id}` and its events are kept, with a `deleted`
    event naming who deleted it.
    """
    with transaction() as session:
        delete_node(session, name, actor=current_actor())
    return Response(status=204)


@bp.post("/import")
@bp.auth_required(auth, roles=[ADMIN])
@bp.input(ImportQuery, location="query", arg_name="query")
@bp.output(ImportReport)
def import_nodes(query: ImportQuery) -> ViewResult:
    """Import nodes from a manifest

    A JSON list of `{name, driver, address, port, username, password, tags}`
    (also accepted as `{"nodes": [...]}`, the sim-fleet manifest), or CSV
    (`Content-Type: text/csv`) with those columns (`tags` separated by `;`).
    Unknown members/columns are ignored. Each row is reported: created,
    updated, skipped (exists, mode=skip) or invalid (and why: e.g. a driver
    that is not enabled, or a BMC endpoint already registered as another node,
    named in the detail). An invalid row changes nothing; the others are applied.
    """
    rows = _manifest_rows()
    actor, update = current_actor(), query.mode == "update"
    parsed = {number: _row_spec(row) for number, row in enumerate(rows, start=1)}
    valid = [(n, spec.spec()) for n, spec in parsed.items() if isinstance(spec, NodeIn)]
    with transaction() as session:
        imported = imports.import_nodes(session, valid, update=update, actor=actor)
    outcomes = {outcome.row: outcome for outcome in imported}
    outcomes.update(
        (n, ImportOutcome(n, _row_name(rows[n - 1]), "invalid", why))
        for n, why in parsed.items()
        if isinstance(why, str)
    )
    return _report([outcomes[n] for n in parsed])


def _manifest_rows() -> list[dict[str, Any]]:
    """The rows of the request's manifest (JSON or CSV).

    :raises InvalidInput: the body is neither a JSON list nor CSV with the columns.
    :raises MalformedBody: the body is not strict UTF-8 JSON (powerq.api.jsonbody).
    :raises UnsupportedMediaType: the body is neither CSV nor JSON.
    """
    if request.mimetype == CSV_MIME:
        return _csv_rows(request.get_data())
    document = request.get_json(force=True)
    if isinstance(document, dict) and isinstance(document.get("nodes"), list):
        document = document["nodes"]
    if not isinstance(document, list) or not all(isinstance(row, dict) for row in document):
        raise InvalidInput('the manifest must be a JSON list of node objects (or {"nodes": [...]})')
    return document


def _csv_rows(data: bytes) -> list[dict[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the CSV manifest is not UTF-8 text") from None
    if not _CSV_BODY.fullmatch(text):
        raise InvalidInput(
            "the CSV manifest must start with the header line "
            f"'{','.join(IMPORT_COLUMNS)}' (optionally ',tags')"
        )
    try:
        return [_csv_row(row) for row in csv.DictReader(io.StringIO(text.lstrip("\ufeff")))]
    except csv.Error as exc:
        raise InvalidInput(f"malformed CSV manifest: {exc}") from None


def _csv_row(row: dict[str | Any, Any]) -> dict[str, Any]:
    """A CSV record as a JSON row: port as a number (empty: default), tags as a list."""
    fields = {key: row.get(key) for key in IMPORT_COLUMNS}
    port = (fields.pop("port") or "").strip()
    if port:
        fields["port"] = int(port) if port.isascii() and port.isdigit() else port
    fields["tags"] = (row.get("tags") or "").replace(";", " ").split()
    return fields


def _row_name(row: dict[str, Any]) -> str | None:
    name = row.get("name")
    return name if isinstance(name, str) and len(name) <= 255 else None


def _row_spec(row: dict[str, Any]) -> NodeIn | str:
    """The row as a validated node, or why it is not one (never echoing values)."""
    known = {key: value for key, value in row.items() if key in IMPORT_FIELDS and value is not None}
    try:
        return NodeIn.model_validate(known)
    except ValidationError as exc:
        return "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'row'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )


def _report(outcomes: list[ImportOutcome]) -> ImportReport:
    summary = {"created": 0, "updated": 0, "skipped": 0, "invalid": 0}
    for outcome in outcomes:
        summary[outcome.outcome] += 1
    rows = [
        ImportRowOut(row=o.row, name=o.name, outcome=o.outcome, detail=o.detail) for o in outcomes
    ]
    return ImportReport(summary=summary, rows=rows)


_ROW_SCHEMA = {
    "type": "object",
    "description": "A node as in POST /v1/nodes (NodeIn); each row is validated on its own "
    "and an invalid one is reported, not fatal",
}
openapi.document_request_body(
    "/v1/nodes/import",
    "post",
    {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "array", "items": _ROW_SCHEMA},
                        {
                            "type": "object",
                            "properties": {"nodes": {"type": "array", "items": _ROW_SCHEMA}},
                            "required": ["nodes"],
                        },
                    ]
                }
            },
            CSV_MIME: {
                "schema": {"type": "string", "pattern": CSV_BODY_PATTERN},
                "example": "name,driver,address,port,username,password,tags\n"
                "node-1,ipmi,10.0.0.11,623,admin,secret,rack1;gpu\n",
            },
        },
    },
)


def init_app(app: APIFlask) -> None:
    """Register the nodes blueprint."""
    app.register_blueprint(bp)
