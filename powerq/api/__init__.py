"""The Flask JSON API: an app factory, blueprints, and modules plugged in by ``init_app``.

Validation and the OpenAPI document come from **APIFlask** (3.x) with
**pydantic 2** models. Why: APIFlask is a maintained, thin layer over Flask
itself (blueprints, error handlers and the test client stay plain Flask), it
validates request bodies and query strings and generates an OpenAPI 3.1
document from the same decorators, and since 3.0 it takes pydantic models, the
library powerq already uses for its settings. The models type-check under
mypy strict, so one set of classes is the validator, the serialiser and the
documentation. (flask-smorest would mean marshmallow schemas next to pydantic
ones; spectree is a smaller project with less of Flask's error handling.)

Layout: :mod:`.problems` (RFC 9457 errors), :mod:`.jsonbody` (the one strict
parser of every JSON request body), :mod:`.auth` (tokens and roles),
:mod:`.openapi` (document finishing), and one blueprint module per resource:
:mod:`.health`, :mod:`.nodes`, :mod:`.power`, :mod:`.power_requests`,
:mod:`.tokens`, :mod:`.metrics` (``GET /metrics`` for Prometheus). Batches
(issue 8) plug in the same way: add a ``powerq.api.batches`` module with an
``init_app(app)`` to :data:`BLUEPRINT_MODULES`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from powerq import __version__
from powerq.config import Settings, get_settings

if TYPE_CHECKING:  # importing the package (e.g. for its CLI) does not load Flask
    from apiflask import APIFlask

SPEC_PATH = "/v1/openapi.json"

# Modules whose init_app(app) registers a blueprint, in order.
BLUEPRINT_MODULES: tuple[str, ...] = (
    "powerq.api.health",
    "powerq.api.nodes",
    "powerq.api.power",
    "powerq.api.power_requests",
    "powerq.api.tokens",
    "powerq.api.ui",  # the status page (/, /nodes/<name>) and GET /v1/whoami
    "powerq.api.batches",
    "powerq.api.metrics",  # GET /metrics (Prometheus), computed from PostgreSQL
    "powerq.api.summary",  # GET /v1/summary: the fleet's counts (the status page's cards)
)

_APIFLASK_CONFIG: dict[str, Any] = {
    "OPENAPI_VERSION": "3.1.0",
    "INFO": {
        "description": "Serialised, durable, verified power actions for bare-metal fleets. "
        "Errors are RFC 9457 application/problem+json.",
    },
    # Error responses are documented by powerq.api.openapi, as problem+json.
    "AUTO_VALIDATION_ERROR_RESPONSE": False,
    "AUTO_AUTH_ERROR_RESPONSE": False,
    "AUTO_404_RESPONSE": False,
    "AUTO_SERVERS": False,
    "VALIDATION_ERROR_STATUS_CODE": 422,
}


def create_app(settings: Settings | None = None) -> APIFlask:
    """Build the API. Nothing connects to PostgreSQL or Redis until a request needs it.

    :raises ConfigError: a ``POWERQ_*`` setting is malformed (when ``settings`` is None).
    """
    from apiflask import APIFlask

    from powerq import db
    from powerq.api import converters, jsonbody, openapi, problems

    settings = settings or get_settings()
    db.keep_connections_for(settings.api_threads)
    app = APIFlask(
        "powerq",
        title="powerq",
        version=__version__,
        spec_path=SPEC_PATH,
        # No docs page: APIFlask's loads Swagger UI from a CDN (unpinned, no
        # integrity hash, an inline script a strict CSP forbids) and invites
        # pasting a token. Local viewers read SPEC_PATH (README, "API documentation").
        docs_path=None,
    )
    app.config.update(_APIFLASK_CONFIG)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["POWERQ_SETTINGS"] = settings
    problems.init_app(app)
    jsonbody.init_app(app)
    openapi.init_app(app)
    converters.init_app(app)
    for name in BLUEPRINT_MODULES:
        importlib.import_module(name).init_app(app)
    return app
