"""The web status page: ``/`` (the fleet), ``/nodes/<name>`` (one node),
``/batches`` and ``/batches/<id>`` (batches and their per-node results), and
``GET /v1/whoami`` (who the caller's token is, so the page knows its role).

The pages are static HTML shells; the browser fills them from the JSON API with
the operator's token (``GET /v1/summary``, ``GET /v1/nodes`` with filters and
``changed_since``, ``GET /v1/nodes/{name}``, ``…/requests``, ``…/events``,
``POST …/power``, ``PATCH /v1/nodes/{name}``, ``DELETE /v1/requests/{id}``,
``GET``/``DELETE /v1/batches…``), so a node looks the same on the
page as it does to scripts, and the page can never show or do more than the
token allows. The token is kept in the tab's ``sessionStorage`` and sent only in
the ``Authorization`` header, never in a URL. Scripts and styles come from this
app alone: no build step, nothing fetched from the network, and a
Content-Security-Policy that forbids anything else (including inline script).
"""

from __future__ import annotations

import uuid
from typing import Literal

from apiflask import APIBlueprint, APIFlask
from flask import Blueprint, Response, make_response, render_template
from pydantic import BaseModel, Field

from powerq import __version__
from powerq.api.auth import READER, auth, current_identity
from powerq.api.results import ViewResult

pages = Blueprint(
    "ui",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/ui/static",
)
whoami_bp = APIBlueprint("whoami", __name__, url_prefix="/v1", tag="Tokens")

# How often the pages poll the API, in milliseconds.
REFRESH_MS = 3000

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class WhoAmI(BaseModel):
    """The caller: the actor recorded on its requests, and its token's role."""

    actor: str = Field(description="The token's name, recorded on requests and events")
    role: Literal["reader", "operator", "admin"] = Field(
        description="reader: reads; operator: also requests power; admin: also nodes and tokens"
    )


@whoami_bp.get("/whoami")
@whoami_bp.auth_required(auth, roles=[READER])
@whoami_bp.output(WhoAmI)
def whoami() -> ViewResult:
    """Who the bearer token belongs to, and its role"""
    identity = current_identity()
    return WhoAmI.model_validate({"actor": identity.name, "role": identity.role})


@pages.get("/")
def fleet_page() -> Response:
    """The fleet: every node's observed and desired power state, live."""
    return _page("fleet.html", page="fleet")


@pages.get("/nodes/<node:name>")
def node_page(name: str) -> Response:
    """One node: its state, its power history and its audit trail."""
    return _page("node.html", page="node", node=name)


@pages.get("/batches")
def batches_page() -> Response:
    """The batches, newest first, with their progress."""
    return _page("batches.html", page="batches")


@pages.get("/batches/<uuid:batch_id>")
def batch_page(batch_id: uuid.UUID) -> Response:
    """One batch: its progress and each node's result."""
    return _page("batches.html", page="batches", batch=str(batch_id))


def _page(template: str, **context: str) -> Response:
    html = render_template(template, refresh_ms=REFRESH_MS, version=__version__, **context)
    response = make_response(html)
    response.headers.update(_PAGE_HEADERS)
    return response


def init_app(app: APIFlask) -> None:
    """Register the pages and ``GET /v1/whoami``."""
    app.register_blueprint(pages)
    app.register_blueprint(whoami_bp)
