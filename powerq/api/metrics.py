"""``GET /metrics``: powerq's Prometheus metrics, computed from PostgreSQL at scrape time.

A reader token is required (Prometheus sends it with ``authorization`` in its
scrape config) unless ``POWERQ_METRICS_PUBLIC=1``. The body is Prometheus's
text format, or OpenMetrics when the scraper asks for it (prometheus_client's
own content negotiation). Errors are problem+json like everywhere else: 401
without a valid token, 503 when PostgreSQL does not answer. A broker that does
not answer is a metric (``powerq_broker_up 0``), not an error.
"""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint, APIFlask
from flask import Response, request
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from powerq.api.auth import READER, auth
from powerq.config import Settings
from powerq.metrics import PowerqCollector

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_FORMAT = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_RESPONSES: dict[int | str, dict[str, str | dict[str, dict[str, Any]]]] = {
    200: {
        "description": "The metrics, in Prometheus's text format (OpenMetrics on request)",
        "content": {
            TEXT_FORMAT.split(";")[0]: {"schema": {"type": "string"}},
            OPENMETRICS_FORMAT.split(";")[0]: {"schema": {"type": "string"}},
        },
    },
}


def _blueprint(public: bool, registry: CollectorRegistry) -> APIBlueprint:
    """The blueprint of ``GET /metrics``, open or behind a reader token."""
    bp = APIBlueprint("metrics", __name__, tag="Metrics")

    def metrics() -> Response:
        """Prometheus metrics

        Request counts by action, status and failure kind, latency histograms,
        outstanding requests and queue depth per lane, node health and the age
        of the oldest power-state reading: computed from PostgreSQL (and Redis)
        on every scrape. See docs/metrics.md.

        :raises sqlalchemy.exc.DBAPIError: the database is unreachable (→ 503).
        """
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(registry), content_type=content_type)

    view = bp.doc(responses=_RESPONSES)(metrics)
    if not public:
        view = bp.auth_required(auth, roles=[READER])(view)
    bp.get("/metrics")(view)
    return bp


def init_app(app: APIFlask) -> None:
    """Register ``GET /metrics`` with a registry holding powerq's collector."""
    settings: Settings = app.config["POWERQ_SETTINGS"]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PowerqCollector(settings.lanes))
    app.register_blueprint(_blueprint(settings.metrics_public, registry))
